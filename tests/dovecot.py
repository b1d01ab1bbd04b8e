"""A throwaway Dovecot on a free loopback port, per ../shared/TESTING-SERVICES.md.

One user, `support` / `secret`, with Maildir mail in a temporary directory. `capability`
replaces the capabilities advertised after login (Dovecot's `imap_capability`), which is
how a server without MOVE or IDLE is imitated. With `tls`, a certificate for 127.0.0.1
from a throwaway CA (trustme; its PEM at `ca_file`) serves STARTTLS on `port` and
implicit TLS on `tls_port`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trustme
from imapclient import IMAPClient

from tests.conftest import need
from tests.daemon import free_port

USER = "support"
PASSWORD = "secret"


def running_dovecot(
    capability: str | None = None, introspection_url: str | None = None, *, tls: bool = False
) -> Iterator[Dovecot]:
    """A started server for a fixture to yield from; stopped and removed afterwards."""
    need(shutil.which("dovecot") is not None, "dovecot is not installed (dovecot-imapd)")
    # mkdtemp, not pytest's tmp_path: as root, Dovecot's mail user must traverse it.
    root = Path(tempfile.mkdtemp(prefix="maild-dovecot-"))
    server = Dovecot(root, capability, introspection_url, tls=tls).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def mailbox(server: Dovecot, **overrides: Any) -> dict[str, Any]:
    """An `[[imap]]` table for the server's one mailbox (the shortest lease maild allows)."""
    return {
        "name": "support",
        "host": "127.0.0.1",
        "port": server.port,
        "tls": "none",
        "allow_plaintext": True,
        "username": USER,
        "password": PASSWORD,
        "address": "support@example.com",
        "lease_seconds": 3,
        **overrides,
    }


class Dovecot:
    def __init__(
        self,
        root: Path,
        capability: str | None = None,
        introspection_url: str | None = None,
        *,
        tls: bool = False,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.ca_file = root / "ca.pem"
        self._capability = capability
        # XOAUTH2: Dovecot asks this RFC 7662 endpoint whether a token is valid, and whose.
        self._introspection_url = introspection_url

    def start(self, timeout: float = 15.0) -> Dovecot:
        root = self.root
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # imap-login refuses to run as root; mail is owned by the `dovecot` user.
            entry = pwd.getpwnam("dovecot")
            uid, gid = entry.pw_uid, entry.pw_gid
            internal_user, internal_group, login_user = "dovecot", "dovecot", "dovenull"
            shutil.chown(root / "mail", uid, gid)
            # The caller puts `root` in a world-traversable place (tempfile.mkdtemp in /tmp).
            root.chmod(0o755)
        else:
            uid, gid = os.getuid(), os.getgid()
            internal_user = login_user = pwd.getpwuid(uid).pw_name
            internal_group = internal_user
        (root / "passwd").write_text(
            f"{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{root / 'mail' / USER}\n"
        )
        capability = f"imap_capability = {self._capability}\n" if self._capability else ""
        ssl = "ssl = no\n"
        if self.tls_port:
            ca = trustme.CA()
            ca.cert_pem.write_to_path(str(self.ca_file))
            served = ca.issue_cert("127.0.0.1")
            served.private_key_pem.write_to_path(str(root / "key.pem"))
            served.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
            ssl = f"ssl = yes\nssl_cert = <{root}/cert.pem\nssl_key = <{root}/key.pem\n"
        mechanisms = "plain login"
        oauth2 = ""
        if self._introspection_url:
            mechanisms += " xoauth2"
            (root / "oauth2.conf").write_text(
                f"introspection_url = {self._introspection_url}\n"
                "introspection_mode = post\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
            )
            oauth2 = (
                f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2\n"
                f"  args = {root}/oauth2.conf\n}}\n"
            )
        (root / "dovecot.conf").write_text(
            f"""protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = maild-test-{uuid.uuid4().hex[:8]}
log_path = {root}/dovecot.log
{ssl}disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
auth_failure_delay = 0
mail_location = maildir:{root}/mail/%u
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = 1
{capability}{oauth2}passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
  chroot =
}}
service anvil {{
  chroot =
  # Failed logins from 127.0.0.1 (the wrong-password tests) would otherwise delay every
  # later failure by 2 to 15 s.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""
        )
        subprocess.run(["dovecot", "-c", str(root / "dovecot.conf")], check=True, timeout=30)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # nothing to await: the port simply is not open yet

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the master and wait (bounded) until it is gone, so its files can be removed."""
        pid_file = self.root / "run" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)  # not our child: no wait() to block on

    def client(self) -> IMAPClient:
        """A logged-in client for arranging and inspecting the mailbox."""
        client = IMAPClient("127.0.0.1", self.port, ssl=False, timeout=10)
        client.login(USER, PASSWORD)
        return client

    def reset(self) -> None:
        """Empty INBOX and delete every other folder, so tests do not see each other's mail."""
        with self.client() as client:
            for _flags, _delimiter, name in client.list_folders():
                if name.upper() != "INBOX":
                    with contextlib.suppress(Exception):
                        client.delete_folder(name)
            client.select_folder("INBOX")
            uids = client.search("ALL")
            if uids:
                client.delete_messages(uids)
                client.expunge()


def _running(pid: int) -> bool:
    """False once the process is gone or a zombie (whose reaping is init's business)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"
