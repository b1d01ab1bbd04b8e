"""IMAP mailboxes against a real Dovecot on loopback: spool, then move/flag/delete, safely."""

from __future__ import annotations

import http.server
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient.exceptions import LoginError
from sqlalchemy import func, select

from maild.app import App
from maild.config import parse_settings
from maild.db.models import Message, SpoolEntry
from maild.errors import ConfigError
from maild.receive.imap import Pollers, TokenCommandError, make_pollers, password_for
from maild.types import Direction
from tests.conftest import AppFactory, make_mail, need
from tests.daemon import Daemon, write_config
from tests.dovecot import PASSWORD, USER, Dovecot

PROCESSED = "maild.processed"  # "maild/processed" with Dovecot's Maildir separator
TOO_LARGE = "maild.too-large"


def _server(
    capability: str | None = None, introspection_url: str | None = None
) -> Iterator[Dovecot]:
    need(shutil.which("dovecot") is not None, "dovecot is not installed (dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="maild-dovecot-"))
    server = Dovecot(root, capability, introspection_url).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[Dovecot]:
    yield from _server()


class _Introspection(http.server.BaseHTTPRequestHandler):
    """RFC 7662 token introspection: only "good-token" is active, and it is `support`'s."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        active = "token=good-token&" in body + "&"
        answer = json.dumps({"active": active, "username": USER} if active else {"active": False})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture(scope="session")
def dovecot_oauth_server() -> Iterator[Dovecot]:
    # Dovecot validates XOAUTH2 tokens offline against this loopback endpoint.
    endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Introspection)
    thread = threading.Thread(target=endpoint.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{endpoint.server_port}/introspect"
    try:
        yield from _server(introspection_url=url)
    finally:
        endpoint.shutdown()
        endpoint.server_close()


@pytest.fixture
def dovecot_oauth(dovecot_oauth_server: Dovecot) -> Dovecot:
    dovecot_oauth_server.reset()
    return dovecot_oauth_server


@pytest.fixture(scope="session")
def dovecot_no_move_server() -> Iterator[Dovecot]:
    # Neither MOVE nor IDLE: the COPY + \Deleted + UID EXPUNGE path, and polling.
    yield from _server("IMAP4rev1 LITERAL+ UIDPLUS NAMESPACE")


@pytest.fixture
def dovecot(dovecot_server: Dovecot) -> Dovecot:
    dovecot_server.reset()
    return dovecot_server


@pytest.fixture
def dovecot_no_move(dovecot_no_move_server: Dovecot) -> Dovecot:
    dovecot_no_move_server.reset()
    return dovecot_no_move_server


@pytest.fixture
def running() -> Iterator[list[Pollers]]:
    started: list[Pollers] = []
    yield started
    for pollers in started:
        pollers.stop(10)


def mailbox(server: Dovecot, **overrides: Any) -> dict[str, Any]:
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


def app_for(make_app: AppFactory, *mailboxes: dict[str, Any], **sections: Any) -> App:
    return make_app(imap=list(mailboxes), **sections)


def append(server: Dovecot, raw: bytes, folder: str = "INBOX") -> None:
    with server.client() as client:
        if not client.folder_exists(folder):
            client.create_folder(folder)
        client.append(folder, raw)


def folder_count(server: Dovecot, folder: str) -> int:
    with server.client() as client:
        if not client.folder_exists(folder):
            return 0
        return int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])


def flags_in(server: Dovecot, folder: str) -> list[tuple[bytes, ...]]:
    with server.client() as client:
        client.select_folder(folder, readonly=True)
        fetched = client.fetch(client.search("ALL"), ["FLAGS"])
        return [item[b"FLAGS"] for item in fetched.values()]


def drain(app: App) -> None:
    last = 0
    while (outcome := app.processor.process_next(after_id=last)) is not None:
        last = outcome.spool_id


def message_ids(app: App) -> list[str]:
    with app.db.transaction() as session:
        # Inbound only: processing may also record mail maild sends (acknowledgements).
        query = select(Message.message_id).where(Message.direction == Direction.IN)
        return sorted(session.scalars(query))


def spooled(app: App) -> int:
    with app.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(SpoolEntry)) or 0)


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """For state only visible by looking (poller status); mail pickup awaits an Event."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def once(app: App, on_spooled: Callable[[], None] = lambda: None, index: int = 0) -> int:
    pollers = make_pollers(app.settings, app.db, app.clock, on_spooled)
    return pollers.pollers[index].sync_once()


# --- one pass ------------------------------------------------------------------------------


def test_appended_mail_becomes_ticket_and_is_moved(make_app: AppFactory, dovecot: Dovecot) -> None:
    app = app_for(make_app, mailbox(dovecot))
    append(dovecot, make_mail(message_id="<imap-1@customer.example>"))
    append(dovecot, make_mail(message_id="<imap-2@customer.example>", subject="Second"))

    assert once(app) == 2
    drain(app)

    assert message_ids(app) == ["<imap-1@customer.example>", "<imap-2@customer.example>"]
    assert folder_count(dovecot, "INBOX") == 0
    assert folder_count(dovecot, PROCESSED) == 2
    with app.db.transaction() as session:
        entry = session.scalars(select(SpoolEntry)).first()
        assert entry is not None
        assert entry.source == "imap"
        assert entry.envelope["rcpt_to"] == ["support@example.com"]
        assert entry.envelope["mail_from"] is None
    assert once(app) == 0


def test_flag_mode_leaves_mail_seen_and_checkpoint_skips_it(
    make_app: AppFactory, dovecot: Dovecot
) -> None:
    app = app_for(make_app, mailbox(dovecot, after="flag"))
    append(dovecot, make_mail(message_id="<flag-1@customer.example>"))

    assert once(app) == 1
    assert flags_in(dovecot, "INBOX") == [(b"\\Seen",)]
    assert once(app) == 0  # still there, but below the checkpoint
    drain(app)
    assert message_ids(app) == ["<flag-1@customer.example>"]


def test_delete_mode_expunges(make_app: AppFactory, dovecot: Dovecot) -> None:
    app = app_for(make_app, mailbox(dovecot, after="delete"))
    append(dovecot, make_mail(message_id="<delete-1@customer.example>"))

    assert once(app) == 1
    assert folder_count(dovecot, "INBOX") == 0
    assert folder_count(dovecot, PROCESSED) == 0


def test_uidvalidity_change_rescans_without_duplicate_tickets(
    make_app: AppFactory, dovecot: Dovecot
) -> None:
    app = app_for(make_app, mailbox(dovecot, after="flag", folders=["Support"]))
    first = make_mail(message_id="<uv-1@customer.example>")
    append(dovecot, first, "Support")
    append(dovecot, make_mail(message_id="<uv-2@customer.example>"), "Support")
    assert once(app) == 2
    with dovecot.client() as client:
        old = client.select_folder("Support")[b"UIDVALIDITY"]
        client.close_folder()
        client.delete_folder("Support")
    # Recreated: UIDs restart at 1, below the old checkpoint (last UID 2).
    append(dovecot, first, "Support")
    append(dovecot, make_mail(message_id="<uv-3@customer.example>"), "Support")
    with dovecot.client() as client:
        assert client.select_folder("Support")[b"UIDVALIDITY"] != old

    assert once(app) == 2  # a rescan: both are fetched again
    drain(app)
    assert message_ids(app) == [
        "<uv-1@customer.example>",
        "<uv-2@customer.example>",
        "<uv-3@customer.example>",
    ]


class Crash(Exception):
    """Stands for the process dying between the spool commit and the move."""


def test_crash_between_commit_and_move_refetches_once(
    make_app: AppFactory, dovecot: Dovecot
) -> None:
    app = app_for(make_app, mailbox(dovecot))
    append(dovecot, make_mail(message_id="<crash-1@customer.example>"))

    def crash() -> None:
        raise Crash

    with pytest.raises(Crash):
        once(app, on_spooled=crash)
    assert spooled(app) == 1
    assert folder_count(dovecot, "INBOX") == 1  # not acknowledged

    assert once(app) == 1  # fetched again after the "restart"
    drain(app)
    assert spooled(app) == 2
    assert message_ids(app) == ["<crash-1@customer.example>"]
    assert folder_count(dovecot, "INBOX") == 0
    assert folder_count(dovecot, PROCESSED) == 1


def test_too_large_mail_is_moved_without_download(
    make_app: AppFactory, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_for(make_app, mailbox(dovecot), mail={"max_message_size": 4000})
    append(dovecot, make_mail(message_id="<big@customer.example>", body="x" * 8000 + "\n"))
    append(dovecot, make_mail(message_id="<small@customer.example>"))

    assert once(app) == 1
    drain(app)
    assert message_ids(app) == ["<small@customer.example>"]
    assert folder_count(dovecot, TOO_LARGE) == 1
    assert [b"\\Seen" in flags for flags in flags_in(dovecot, TOO_LARGE)] == [False]  # unread
    assert [r.getMessage() for r in caplog.records] == ["imap mail too large"]
    assert folder_count(dovecot, "INBOX") == 0


def test_server_without_move_copies_expunges_and_polls(
    make_app: AppFactory, dovecot_no_move: Dovecot, running: list[Pollers]
) -> None:
    app = app_for(make_app, mailbox(dovecot_no_move, poll_interval=0.2))
    got = threading.Event()
    pollers = make_pollers(app.settings, app.db, app.clock, got.set).start()
    running.append(pollers)
    append(dovecot_no_move, make_mail(message_id="<nomove@customer.example>"))

    assert got.wait(15)
    wait_until(lambda: folder_count(dovecot_no_move, PROCESSED) == 1)
    assert folder_count(dovecot_no_move, "INBOX") == 0
    assert pollers.status()["support"]["state"] in ("polling", "syncing")
    assert pollers.status()["support"]["errors"] == {}


def _oauth(server: Dovecot, *command: str) -> dict[str, Any]:
    settings = mailbox(server, auth="xoauth2", token_command=list(command))
    del settings["password"]
    return settings


def test_xoauth2_with_token_from_command(make_app: AppFactory, dovecot_oauth: Dovecot) -> None:
    app = app_for(make_app, _oauth(dovecot_oauth, sys.executable, "-c", "print('good-token')"))
    append(dovecot_oauth, make_mail(message_id="<oauth@customer.example>"))

    assert once(app) == 1
    assert folder_count(dovecot_oauth, PROCESSED) == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("print('expired-token')", LoginError),
        ("import sys; sys.exit('no refresh token')", TokenCommandError),
        ("print('')", TokenCommandError),
    ],
)
def test_xoauth2_failures(
    make_app: AppFactory, dovecot_oauth: Dovecot, code: str, error: type[Exception]
) -> None:
    app = app_for(make_app, _oauth(dovecot_oauth, sys.executable, "-c", code))
    append(dovecot_oauth, make_mail())
    with pytest.raises(error):
        once(app)
    assert spooled(app) == 0
    assert folder_count(dovecot_oauth, "INBOX") == 1


# --- the loop --------------------------------------------------------------------------------


def test_idle_picks_up_mail_without_waiting_for_the_poll_interval(
    make_app: AppFactory, dovecot: Dovecot, running: list[Pollers]
) -> None:
    app = app_for(make_app, mailbox(dovecot, poll_interval=3600))
    got = threading.Event()
    pollers = make_pollers(app.settings, app.db, app.clock, got.set).start()
    running.append(pollers)
    wait_until(lambda: pollers.status()["support"]["state"] == "idle")

    append(dovecot, make_mail(message_id="<idle@customer.example>"))
    assert got.wait(15)
    wait_until(lambda: folder_count(dovecot, PROCESSED) == 1)
    assert pollers.status()["support"]["last_fetch"] is not None


def test_bad_password_does_not_stop_other_mailbox(
    make_app: AppFactory, dovecot: Dovecot, running: list[Pollers]
) -> None:
    app = app_for(
        make_app,
        mailbox(dovecot, name="broken", password="wrong", address="billing@example.com"),
        mailbox(dovecot, name="support"),
    )
    got = threading.Event()
    pollers = make_pollers(app.settings, app.db, app.clock, got.set).start()
    running.append(pollers)
    append(dovecot, make_mail(message_id="<works@customer.example>"))

    assert got.wait(15)
    wait_until(lambda: pollers.status()["broken"]["errors"].get("auth", 0) >= 1)
    wait_until(lambda: pollers.status()["support"]["last_fetch"] is not None)
    status = pollers.status()
    assert status["broken"]["last_fetch"] is None
    assert status["support"]["last_fetch"] is not None
    assert status["support"]["errors"] == {}


def test_lease_lets_one_poller_fetch_and_another_take_over(
    make_app: AppFactory, dovecot: Dovecot, running: list[Pollers]
) -> None:
    app = app_for(make_app, mailbox(dovecot))
    got = threading.Event()
    first = make_pollers(app.settings, app.db, app.clock, got.set, holder="first").start()
    running.append(first)
    wait_until(lambda: first.status()["support"]["state"] == "idle")
    second = make_pollers(app.settings, app.db, app.clock, got.set, holder="second").start()
    running.append(second)
    wait_until(lambda: second.status()["support"]["state"] == "standby")

    for n in range(3):
        append(dovecot, make_mail(message_id=f"<lease-{n}@customer.example>"))
    wait_until(lambda: spooled(app) == 3 and folder_count(dovecot, PROCESSED) == 3)
    assert second.status()["support"]["last_fetch"] is None

    first.stop(10)  # releases the lease: the other instance takes over
    got.clear()
    wait_until(lambda: second.status()["support"]["state"] == "idle")
    append(dovecot, make_mail(message_id="<lease-3@customer.example>"))
    assert got.wait(15)
    wait_until(lambda: folder_count(dovecot, PROCESSED) == 4)
    assert spooled(app) == 4  # each mail once
    assert first.pollers[0].lease.holder() == "second"


# --- configuration ------------------------------------------------------------------------


def _settings(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "m",
        "host": "imap.example.com",
        "username": "u",
        "password": "p",
        "address": "support@example.com",
        **overrides,
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls": "none"}, "needs allow_plaintext = true"),
        ({"tls": "none", "allow_plaintext": True}, "only allowed to a loopback host"),
        ({"password_env": "X"}, "exactly one of 'password' and 'password_env'"),
        ({"password": None}, "exactly one of 'password' and 'password_env'"),
        ({"after": "move", "move_to": "Archive", "folders": ["Archive"]}, "watched folders"),
        ({"auth": "xoauth2"}, "uses token_command, not a password"),
        ({"auth": "xoauth2", "password": None}, "needs token_command"),
        ({"token_command": ["get-token"]}, "only used with auth = 'xoauth2'"),
    ],
)
def test_config_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_settings({"imap": [_settings(**overrides)]}, "config.toml")
    assert "'p'" not in str(caught.value)  # the password is never echoed


def test_password_from_environment() -> None:
    settings = parse_settings({"imap": [_settings(password=None, password_env="PW")]}, "c")
    assert password_for(settings.imap[0], {"PW": "s3cret"}) == "s3cret"
    with pytest.raises(ConfigError, match="'PW', which is not set"):
        password_for(settings.imap[0], {})


def test_duplicate_mailbox_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        parse_settings({"imap": [_settings(), _settings()]}, "c")


# --- maild run -----------------------------------------------------------------------------


def test_maild_run_takes_imap_mail(tmp_path: Path, db_url: str, dovecot: Dovecot) -> None:
    config = write_config(tmp_path, db_url)
    lines = ["[[imap]]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in mailbox(dovecot).items()]
    with config.path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    daemon = Daemon(config, tmp_path)
    try:
        daemon.start()
        append(dovecot, make_mail(message_id="<daemon@customer.example>"))
        daemon.wait_for(lambda e: e.get("event") == "imap spooled")
        daemon.processed(1)
        wait_until(lambda: folder_count(dovecot, PROCESSED) == 1)
        url = f"http://127.0.0.1:{config.http_port}/healthz"
        with urllib.request.urlopen(url, timeout=10) as response:
            health = json.load(response)
        assert health["imap"]["support"]["last_fetch"] is not None
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
