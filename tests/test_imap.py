"""IMAP mailboxes against a real Dovecot on loopback: spool, then move/flag/delete, safely."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from imapclient.exceptions import LoginError
from sqlalchemy import create_engine, func, select

from maild import cli
from maild.app import App
from maild.clock import FixedClock
from maild.config import load_settings, parse_settings
from maild.db.models import ImapOAuthToken, Message, SpoolEntry
from maild.errors import ConfigError
from maild.health import Metrics
from maild.receive.imap import Lease, Pollers, make_pollers, password_for
from maild.receive.imap_oauth import TokenCommandError, TokenError
from maild.types import Direction
from tests.conftest import AppFactory, make_mail
from tests.daemon import Daemon, free_port, write_config
from tests.dovecot import USER, Dovecot, mailbox, running_dovecot
from tests.oauth_provider import CLIENT_ID, CLIENT_SECRET, Provider

# For behaviour of the IMAP side alone: the storage it touches (spool, checkpoints, lease,
# tokens) is tested on both databases by the other tests.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

PROCESSED = "maild.processed"  # "maild/processed" with Dovecot's Maildir separator
TOO_LARGE = "maild.too-large"


@pytest.fixture(scope="session")
def dovecot_server() -> Iterator[Dovecot]:
    yield from running_dovecot()


@pytest.fixture(scope="session")
def oauth_provider() -> Iterator[Provider]:
    provider = Provider(USER).start()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def dovecot_oauth_server(oauth_provider: Provider) -> Iterator[Dovecot]:
    # Dovecot validates XOAUTH2 tokens offline against the provider's introspection.
    yield from running_dovecot(introspection_url=oauth_provider.url("/introspect"))


@pytest.fixture
def dovecot_oauth(dovecot_oauth_server: Dovecot, oauth_provider: Provider) -> Dovecot:
    dovecot_oauth_server.reset()
    oauth_provider.reset()
    return dovecot_oauth_server


@pytest.fixture(scope="session")
def dovecot_no_move_server() -> Iterator[Dovecot]:
    # Neither MOVE nor IDLE: the COPY + \Deleted + UID EXPUNGE path, and polling.
    yield from running_dovecot("IMAP4rev1 LITERAL+ UIDPLUS NAMESPACE")


@pytest.fixture(scope="session")
def dovecot_tls_server() -> Iterator[Dovecot]:
    yield from running_dovecot(tls=True)


@pytest.fixture
def dovecot_tls(dovecot_tls_server: Dovecot) -> Dovecot:
    dovecot_tls_server.reset()
    return dovecot_tls_server


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


@SQLITE_ONLY
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


@SQLITE_ONLY
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


@SQLITE_ONLY
def test_database_unavailable_leaves_mail_in_the_inbox(
    make_app: AppFactory, db_url: str, dovecot: Dovecot, running: list[Pollers]
) -> None:
    app = app_for(
        make_app, mailbox(dovecot), database={"url": db_url, "sqlite_busy_timeout_ms": 50}
    )
    append(dovecot, make_mail(message_id="<locked@customer.example>"))
    got = threading.Event()
    pollers = make_pollers(app.settings, app.db, app.clock, got.set)
    # Another writer holds the database: nothing can be committed, so nothing is taken.
    locker = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        running.append(pollers.start())
        wait_until(lambda: pollers.status()["support"]["errors"].get("database", 0) >= 1)
        assert folder_count(dovecot, "INBOX") == 1
    finally:
        locker.rollback()
        locker.close()
    assert got.wait(15)  # the retry after the backoff
    wait_until(lambda: folder_count(dovecot, PROCESSED) == 1)
    assert spooled(app) == 1


@SQLITE_ONLY
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
    imap_records = [r for r in caplog.records if r.name == "maild.imap"]
    assert [r.getMessage() for r in imap_records] == ["imap mail too large"]
    assert folder_count(dovecot, "INBOX") == 0


@SQLITE_ONLY
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


@SQLITE_ONLY
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_tls_modes_with_a_private_ca(make_app: AppFactory, dovecot_tls: Dovecot, mode: str) -> None:
    port = dovecot_tls.port if mode == "starttls" else dovecot_tls.tls_port
    settings = mailbox(dovecot_tls, tls=mode, port=port, ca_file=str(dovecot_tls.ca_file))
    app = app_for(make_app, settings | {"allow_plaintext": False})
    append(dovecot_tls, make_mail(message_id=f"<{mode}@customer.example>"))

    assert once(app) == 1
    assert folder_count(dovecot_tls, PROCESSED) == 1


@SQLITE_ONLY
def test_untrusted_certificate_is_a_tls_error(
    make_app: AppFactory, dovecot_tls: Dovecot, running: list[Pollers]
) -> None:
    # No ca_file: the system's CAs do not know the test CA.
    settings = mailbox(dovecot_tls, tls="implicit", port=dovecot_tls.tls_port)
    app = app_for(make_app, settings | {"allow_plaintext": False})
    append(dovecot_tls, make_mail())
    pollers = make_pollers(app.settings, app.db, app.clock, lambda: None).start()
    running.append(pollers)

    wait_until(lambda: pollers.status()["support"]["errors"].get("tls", 0) >= 1)
    assert "CERTIFICATE_VERIFY_FAILED" in (pollers.status()["support"]["last_error"] or "")
    assert folder_count(dovecot_tls, "INBOX") == 1


def _oauth(server: Dovecot, *command: str) -> dict[str, Any]:
    settings = mailbox(server, auth="xoauth2", token_command=list(command))
    del settings["password"]
    return settings


@SQLITE_ONLY
def test_xoauth2_with_token_from_command(make_app: AppFactory, dovecot_oauth: Dovecot) -> None:
    app = app_for(make_app, _oauth(dovecot_oauth, sys.executable, "-c", "print('good-token')"))
    append(dovecot_oauth, make_mail(message_id="<oauth@customer.example>"))

    assert once(app) == 1
    assert folder_count(dovecot_oauth, PROCESSED) == 1


@SQLITE_ONLY
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


# --- OAuth2: the refresh-token flow ------------------------------------------------------------

REFRESH_ENV = {"MAILD_TEST_REFRESH": "seed-1", "MAILD_TEST_SECRET": CLIENT_SECRET}


def _refresh_flow(server: Dovecot, provider: Provider, **overrides: Any) -> dict[str, Any]:
    flow = {
        "auth": "xoauth2",
        "token_url": provider.url("/token"),
        "client_id": CLIENT_ID,
        "client_secret_env": "MAILD_TEST_SECRET",
        "refresh_token_env": "MAILD_TEST_REFRESH",
        "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
    }
    settings = mailbox(server, **{**flow, **overrides})
    del settings["password"]
    return settings


def _stored_refresh(app: App) -> tuple[str, datetime] | None:
    with app.db.transaction() as session:
        row = session.get(ImapOAuthToken, "support")
        return None if row is None else (row.refresh_token, row.expires_at)


def test_refresh_flow_logs_in_and_keeps_the_rotated_refresh_token(
    make_app: AppFactory,
    dovecot_oauth: Dovecot,
    oauth_provider: Provider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_for(make_app, _refresh_flow(dovecot_oauth, oauth_provider))
    oauth_provider.add_refresh_token("seed-1")
    append(dovecot_oauth, make_mail(message_id="<refresh@customer.example>"))

    poller = make_pollers(app.settings, app.db, app.clock, lambda: None, env=REFRESH_ENV).pollers[0]
    assert poller.sync_once() == 1
    assert folder_count(dovecot_oauth, PROCESSED) == 1
    assert oauth_provider.token_requests() == [
        {
            "grant_type": "refresh_token",
            "refresh_token": "seed-1",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
        }
    ]
    # Rotated: "seed-1" is spent now, and no default lifetime came with "rt-1".
    assert _stored_refresh(app) == ("rt-1", app.clock.now() + timedelta(days=90))
    assert poller.snapshot()["oauth_refresh_expires_at"] == "2026-05-31T09:00:00+00:00"

    # A restart continues the chain from the database; the spent seed would be refused.
    again = make_pollers(app.settings, app.db, app.clock, lambda: None, env=REFRESH_ENV)
    assert again.pollers[0].sync_once() == 0
    assert [r["refresh_token"] for r in oauth_provider.token_requests()] == ["seed-1", "rt-1"]
    assert _stored_refresh(app) == ("rt-2", app.clock.now() + timedelta(days=90))

    # The operator hands maild a new refresh token: it wins over the stored chain.
    oauth_provider.add_refresh_token("seed-2")
    env = {**REFRESH_ENV, "MAILD_TEST_REFRESH": "seed-2"}
    assert (
        make_pollers(app.settings, app.db, app.clock, lambda: None, env=env).pollers[0].sync_once()
        == 0
    )
    assert oauth_provider.token_requests()[-1]["refresh_token"] == "seed-2"
    assert _stored_refresh(app) == ("rt-3", app.clock.now() + timedelta(days=90))
    assert not [r for r in caplog.records if "expires soon" in r.getMessage()]


@SQLITE_ONLY
def test_refresh_flow_failures_are_token_errors_without_secrets(
    make_app: AppFactory, dovecot_oauth: Dovecot, oauth_provider: Provider
) -> None:
    app = app_for(make_app, _refresh_flow(dovecot_oauth, oauth_provider))
    append(dovecot_oauth, make_mail())
    # "seed-1" was never issued: the provider answers invalid_grant, as for an expired one.
    with pytest.raises(TokenError) as refused:
        make_pollers(app.settings, app.db, app.clock, lambda: None, env=REFRESH_ENV).pollers[
            0
        ].sync_once()
    assert str(refused.value) == (
        "token endpoint refused (400): invalid_grant: AADSTS70008: The refresh token has expired."
    )
    wrong_secret = {**REFRESH_ENV, "MAILD_TEST_SECRET": "not-it"}
    with pytest.raises(TokenError, match=r"refused \(401\): invalid_client$"):
        make_pollers(app.settings, app.db, app.clock, lambda: None, env=wrong_secret).pollers[
            0
        ].sync_once()
    closed = app_for(make_app, _refresh_flow(dovecot_oauth, oauth_provider, token_url=_closed()))
    with pytest.raises(TokenError, match="token endpoint unreachable"):
        make_pollers(
            closed.settings, closed.db, closed.clock, lambda: None, env=REFRESH_ENV
        ).pollers[0].sync_once()
    with pytest.raises(ConfigError, match="'MAILD_TEST_REFRESH', which is not set"):
        make_pollers(app.settings, app.db, app.clock, lambda: None, env={})
    assert spooled(app) == 0
    assert folder_count(dovecot_oauth, "INBOX") == 1
    assert _stored_refresh(app) is None


def _closed() -> str:
    return f"http://127.0.0.1:{free_port()}/token"


@SQLITE_ONLY
def test_refresh_token_expiry_is_a_metric_and_a_daily_warning(
    make_app: AppFactory,
    dovecot_oauth: Dovecot,
    oauth_provider: Provider,
    clock: FixedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_for(make_app, _refresh_flow(dovecot_oauth, oauth_provider))
    oauth_provider.add_refresh_token("seed-1")
    oauth_provider.refresh_expires_in = 3 * 86400
    metrics = Metrics(app.db, app.clock)
    poller = make_pollers(app.settings, app.db, clock, lambda: None, metrics, env=REFRESH_ENV)
    first = poller.pollers[0]

    def warnings() -> int:
        return sum("refresh token expires soon" in r.getMessage() for r in caplog.records)

    def days_left() -> float | None:
        return metrics.registry.get_sample_value(
            "maild_imap_oauth_refresh_token_days_left", {"mailbox": "support"}
        )

    first.sync_once()
    assert days_left() == 3.0
    assert warnings() == 1
    first.sync_once()  # the cached access token, and no second warning the same day
    assert len(oauth_provider.token_requests()) == 1
    assert warnings() == 1
    clock.advance(timedelta(hours=12))
    assert days_left() == 2.5  # computed when scraped
    clock.advance(timedelta(hours=12))
    first.sync_once()  # the access token has expired meanwhile: refreshed
    assert len(oauth_provider.token_requests()) == 2
    assert warnings() == 2
    assert days_left() == 3.0


@SQLITE_ONLY
def test_poller_reconnects_before_the_access_token_expires(
    make_app: AppFactory, dovecot_oauth: Dovecot, oauth_provider: Provider, running: list[Pollers]
) -> None:
    # 61 s of validity leaves 1 s before the reconnect margin: each session lasts 1 s.
    oauth_provider.expires_in = 61
    oauth_provider.add_refresh_token("seed-1")
    app = app_for(make_app, _refresh_flow(dovecot_oauth, oauth_provider))
    got = threading.Event()
    pollers = make_pollers(app.settings, app.db, app.clock, got.set, env=REFRESH_ENV).start()
    running.append(pollers)

    wait_until(lambda: len(oauth_provider.token_requests()) >= 3)
    append(dovecot_oauth, make_mail(message_id="<renewed@customer.example>"))
    assert got.wait(15)
    wait_until(lambda: folder_count(dovecot_oauth, PROCESSED) == 1)
    assert pollers.status()["support"]["errors"] == {}


# --- maild imap check ------------------------------------------------------------------------


def _check_config(directory: Path, *mailboxes: dict[str, Any]) -> Path:
    directory.mkdir(exist_ok=True)
    config = write_config(directory, f"sqlite:///{directory / 'maild.db'}")
    with config.path.open("a") as handle:
        for one in mailboxes:
            handle.write("[[imap]]\n")
            handle.writelines(
                f"{key} = {json.dumps(value)}\n" for key, value in one.items() if value is not None
            )
    return config.path


def _check(config: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["imap", "check", "--config", str(config), *args], stdout=out)
    return code, out.getvalue()


def test_imap_check_reports_and_changes_nothing(tmp_path: Path, dovecot: Dovecot) -> None:
    config = _check_config(tmp_path, mailbox(dovecot, after="flag"))
    append(dovecot, make_mail(message_id="<check-1@customer.example>"))
    append(dovecot, make_mail(message_id="<check-2@customer.example>"))
    with dovecot.client() as client:
        client.create_folder("Archive")

    code, out = _check(config, "--json")
    assert code == cli.EX_OK
    [report] = json.loads(out)
    assert report["ok"] is True
    assert report["capabilities"] == {"IDLE": True, "MOVE": True, "UIDPLUS": True}
    assert report["folders"] == ["Archive", "INBOX"]
    assert report["mode"] == "idle"
    [inbox] = report["watched"]
    assert (inbox["folder"], inbox["messages"], inbox["unprocessed"]) == ("INBOX", 2, 2)
    assert inbox["checkpoint"] == "none"
    assert report["missing"] == ["maild/too-large"]
    # Nothing changed: no folder created, nothing flagged \Seen, no checkpoint written.
    assert folder_count(dovecot, TOO_LARGE) == 0
    assert [b"\\Seen" in flags for flags in flags_in(dovecot, "INBOX")] == [False, False]

    # After a pass, only mail above the checkpoint counts.
    settings = load_settings(str(config))
    app = App(settings)
    try:
        assert make_pollers(settings, app.db, app.clock, lambda: None).pollers[0].sync_once() == 2
    finally:
        app.close()
    append(dovecot, make_mail(message_id="<check-3@customer.example>"))
    code, out = _check(config)
    assert code == cli.EX_OK
    assert "watch INBOX: 3 messages, 1 unprocessed" in out
    assert "checkpoint current" in out
    assert "capabilities  IDLE yes, MOVE yes, UIDPLUS yes" in out


def test_imap_check_names_failures_and_one_mailbox(
    tmp_path: Path, dovecot: Dovecot, dovecot_no_move: Dovecot
) -> None:
    config = _check_config(
        tmp_path,
        mailbox(dovecot, name="broken", password="wrong"),
        mailbox(dovecot_no_move, name="old-server"),
        mailbox(dovecot, name="no-folder", folders=["Support"]),
    )
    code, out = _check(config)
    assert code == cli.EX_UNAVAILABLE
    assert "broken  127.0.0.1" in out
    assert "FAILED (auth): [AUTHENTICATIONFAILED] Authentication failed." in out
    assert "capabilities  IDLE no, MOVE no, UIDPLUS yes" in out
    assert "waits by      poll every 60 s" in out
    assert "FAILED (folder): watched folder missing on the server: Support" in out

    code, out = _check(config, "old-server")
    assert code == cli.EX_OK
    assert "broken" not in out
    assert _check(config, "nonesuch")[0] == cli.EX_USAGE
    unset = _check_config(tmp_path / "unset", mailbox(dovecot, password=None, password_env="NOPE"))
    assert _check(unset)[0] == cli.EX_CONFIG


# --- the loop --------------------------------------------------------------------------------


@SQLITE_ONLY
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


@SQLITE_ONLY
def test_mail_arriving_during_a_pass_is_taken_without_waiting(
    make_app: AppFactory, dovecot: Dovecot, running: list[Pollers]
) -> None:
    app = app_for(make_app, mailbox(dovecot, poll_interval=3600))
    arrived, second = threading.Event(), threading.Event()

    def spooled_one() -> None:
        # Between the spool commit and the move: the server announces this mail in the
        # MOVE's response, not in the IDLE that follows.
        if arrived.is_set():
            second.set()
            return
        append(dovecot, make_mail(message_id="<during@customer.example>"))
        arrived.set()

    pollers = make_pollers(app.settings, app.db, app.clock, spooled_one).start()
    running.append(pollers)
    wait_until(lambda: pollers.status()["support"]["state"] == "idle")
    append(dovecot, make_mail(message_id="<before@customer.example>"))

    assert second.wait(15)
    wait_until(lambda: folder_count(dovecot, PROCESSED) == 2)
    drain(app)
    assert message_ids(app) == ["<before@customer.example>", "<during@customer.example>"]


@SQLITE_ONLY
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


def _on_log(message: str, seen: threading.Event) -> Callable[[logging.LogRecord], bool]:
    """A log filter that lets everything through and sets `seen` when `message` passes."""

    def keep(record: logging.LogRecord) -> bool:
        if record.getMessage() == message:
            seen.set()
        return True

    return keep


def test_poller_taken_over_during_a_backlog_stops_before_the_next_batch(
    make_app: AppFactory,
    dovecot: Dovecot,
    clock: FixedClock,
    running: list[Pollers],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_for(make_app, mailbox(dovecot, batch_size=1))
    for n in range(3):
        append(dovecot, make_mail(message_id=f"<backlog-{n}@customer.example>"))
    lost = threading.Event()

    def taken_over() -> None:
        # The first batch outlasted the lease, and another instance took the mailbox.
        clock.advance(timedelta(seconds=10))
        assert Lease(app.db, "support", "other", 3, clock).acquire()

    pollers = make_pollers(app.settings, app.db, clock, taken_over, holder="first")
    caplog.set_level(logging.WARNING, "maild.imap")
    caplog.handler.addFilter(_on_log("imap lease lost", lost))
    running.append(pollers.start())

    assert lost.wait(15)
    assert spooled(app) == 1  # the first batch only, acknowledged as usual
    assert folder_count(dovecot, "INBOX") == 2
    assert pollers.pollers[0].lease.holder() == "other"


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


_FLOW = {
    "auth": "xoauth2",
    "password": None,
    "token_url": "https://login.example.com/token",
    "client_id": "c",
    "refresh_token_env": "R",
}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls": "none"}, "needs allow_plaintext = true"),
        ({"tls": "none", "allow_plaintext": True}, "only allowed to a loopback host"),
        ({"password_env": "X"}, "exactly one of 'password' and 'password_env'"),
        ({"password": None}, "exactly one of 'password' and 'password_env'"),
        ({"after": "move", "move_to": "Archive", "folders": ["Archive"]}, "watched folders"),
        ({"auth": "xoauth2"}, "uses an OAuth2 token, not a password"),
        ({"auth": "xoauth2", "password": None}, "needs token_command"),
        ({"token_command": ["get-token"]}, "only used with auth = 'xoauth2'"),
        ({"client_id": "c"}, "client_id is only used with auth = 'xoauth2'"),
        (_FLOW | {"token_command": ["t"]}, "needs token_command or token_url"),
        (_FLOW | {"token_url": None, "token_command": ["t"]}, "belongs to the refresh-token"),
        (_FLOW | {"refresh_token_env": None}, "token_url needs refresh_token_env"),
        (_FLOW | {"token_url": "http://login.example.com/token"}, "must be an https URL"),
        (_FLOW | {"token_url": "https:///token"}, "must be an https URL"),
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


def test_refresh_flow_settings_are_accepted() -> None:
    flow = _FLOW | {"token_url": "http://[::1]:8/t"}
    settings = parse_settings({"imap": [_settings(**flow)]}, "c")
    assert settings.imap[0].refresh_token_lifetime_days == 90.0


def test_example_config_imap_table_is_valid() -> None:
    """The commented [[imap]] table of config.example.toml, uncommented, is a valid mailbox."""
    text = (Path(__file__).resolve().parents[1] / "config.example.toml").read_text()
    block = text[text.index("# [[imap]]") :].split("\n\n", 1)[0]
    live = [line[2:] for line in block.splitlines() if not line.startswith("# #")]
    settings = parse_settings(tomllib.loads("\n".join(live)), "config.example.toml")
    assert [m.move_to for m in settings.imap] == ["maild/processed"]


def test_duplicate_mailbox_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        parse_settings({"imap": [_settings(), _settings()]}, "c")


# --- maild run -----------------------------------------------------------------------------


def _daemon_with_mailbox(directory: Path, db_url: str, server: Dovecot) -> Daemon:
    directory.mkdir()
    config = write_config(directory, db_url)
    lines = ["[[imap]]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in mailbox(server).items()]
    with config.path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    return Daemon(config, directory)


@SQLITE_ONLY
def test_maild_run_takes_imap_mail(tmp_path: Path, db_url: str, dovecot: Dovecot) -> None:
    daemon = _daemon_with_mailbox(tmp_path / "run", db_url, dovecot)
    try:
        daemon.start()
        append(dovecot, make_mail(message_id="<daemon@customer.example>"))
        daemon.wait_for(lambda e: e.get("event") == "imap spooled")
        daemon.processed(1)
        wait_until(lambda: folder_count(dovecot, PROCESSED) == 1)
        url = f"http://127.0.0.1:{daemon.http_port}/healthz"
        with urllib.request.urlopen(url, timeout=10) as response:
            health = json.load(response)
        assert health["imap"]["support"]["last_fetch"] is not None
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_maild_run_on_postgresql_take_each_mail_once(
    tmp_path: Path, db_url: str, dovecot: Dovecot
) -> None:
    """Two instances share one mailbox; killing the lease holder hands it to the other."""
    daemons = [_daemon_with_mailbox(tmp_path / n, db_url, dovecot) for n in ("a", "b")]
    try:
        with ThreadPoolExecutor(2) as pool:  # start both at once; errors propagate
            list(pool.map(Daemon.start, daemons))
        for n in range(5):
            append(dovecot, make_mail(message_id=f"<two-{n}@customer.example>"))
        wait_until(lambda: folder_count(dovecot, PROCESSED) == 5, timeout=30)
        fetchers = [d for d in daemons if d.count(lambda e: e.get("event") == "imap spooled")]
        assert len(fetchers) == 1  # the lease holder alone took the mail
        holder, other = fetchers[0], next(d for d in daemons if d is not fetchers[0])

        holder.kill()  # no release: the other instance waits for the lease to expire
        for n in range(5, 10):
            append(dovecot, make_mail(message_id=f"<two-{n}@customer.example>"))
        other.wait_for(lambda e: e.get("event") == "imap spooled", timeout=30)
        wait_until(lambda: folder_count(dovecot, PROCESSED) == 10, timeout=30)
        other.processed(10 - holder.count(lambda e: e.get("event") == "mail processed"))
        assert folder_count(dovecot, "INBOX") == 0
        engine = create_engine(db_url)
        try:
            with engine.connect() as connection:
                ids = connection.scalars(
                    select(Message.message_id).where(Message.direction == Direction.IN)
                ).all()
                spooled_rows = connection.scalar(select(func.count()).select_from(SpoolEntry))
        finally:
            engine.dispose()
        assert sorted(ids) == sorted(f"<two-{n}@customer.example>" for n in range(10))
        assert spooled_rows == 10
        assert other.terminate() == 0
    finally:
        for daemon in daemons:
            daemon.stop_quietly()
