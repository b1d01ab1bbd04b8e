"""A throwaway Dovecot on a free loopback port, per /work/shared/TESTING-SERVICES.md.

One user, `support` / `secret`, with Maildir mail in a temporary directory. `capability`
replaces the capabilities advertised after login (Dovecot's `imap_capability`), which is
how a server without MOVE or IDLE is imitated.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from imapclient import IMAPClient

from tests.daemon import free_port

USER = "support"
PASSWORD = "secret"


class Dovecot:
    def __init__(
        self, root: Path, capability: str | None = None, introspection_url: str | None = None
    ) -> None:
        self.root = root
        self.port = free_port()
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
ssl = no
disable_plaintext_auth = no
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
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
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
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
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
