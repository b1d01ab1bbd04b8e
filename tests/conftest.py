"""Shared fixtures: one App per test on SQLite and on PostgreSQL, a fixed clock, mail builders.

A test that needs PostgreSQL skips when it is not reachable, except under
MAILD_REQUIRE_SERVICES=1 (CI), where it fails instead.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from maild import spool
from maild.app import App
from maild.clock import FixedClock
from maild.config import parse_settings
from maild.db import migrate
from maild.db.models import Base
from maild.pipeline.process import Outcome
from maild.types import Envelope
from tests.daemon import Daemon

REQUIRE_SERVICES = os.environ.get("MAILD_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get(
    "MAILD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REPO = Path(__file__).resolve().parents[1]
# Third-party sample mail lives beside the project, not in it (../shared/corpus-dev);
# MAILD_CORPUS_DIR points elsewhere, e.g. for a checkout in another place.
CORPUS_DEV = Path(os.environ.get("MAILD_CORPUS_DIR") or REPO.parent / "shared" / "corpus-dev")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _restore_maild_logger() -> Iterator[None]:
    """`maild.logs.configure` (run by in-process CLI tests) stops propagation; undo it."""
    logger = logging.getLogger("maild")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def need_corpus(path: Path) -> None:
    """Skip when the sample corpus is not beside this checkout at all (it is data outside
    the repository, not a service); fail when the corpus is there but lacks `path`."""
    if path.exists():
        return
    if not CORPUS_DEV.is_dir():
        pytest.skip(f"sample corpus not found at {CORPUS_DEV}: set MAILD_CORPUS_DIR")
    pytest.fail(f"corpus fixture missing: {path}")


def need(condition: bool, why: str) -> None:
    """Skip when a service or data set is missing; in CI, fail instead."""
    if condition:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"required by MAILD_REQUIRE_SERVICES=1: {why}")
    pytest.skip(why)


@contextmanager
def throwaway_pg_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        need(False, f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.orig}")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session, migrated to head."""
    with throwaway_pg_database("maild_test") as url:
        engine = create_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url


def _truncate(url: str) -> None:
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'maild.db'}"
    url: str = request.getfixturevalue("pg_url")
    _truncate(url)
    return url


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


AppFactory = Callable[..., App]


@pytest.fixture
def make_app(db_url: str, clock: FixedClock) -> Iterator[AppFactory]:
    apps: list[App] = []

    def factory(**sections: dict[str, Any]) -> App:
        settings = parse_settings({"database": {"url": db_url}, **sections}, source="<test>")
        app = App(settings, clock=clock)
        app.prepare_schema()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: AppFactory) -> App:
    return make_app()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """`maild run` subprocesses a test started; stopped (killed if need be) after it."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop_quietly()


def deliver(app: App, raw: bytes, envelope: Envelope | None = None) -> Outcome:
    """Spool and process one mail, as every receiver does."""
    spool_id = spool.put(app.db, raw, envelope or Envelope(), "test", app.clock.now())
    outcome = app.processor.process(spool_id)
    assert outcome is not None
    return outcome


def make_mail(
    *,
    sender: str = "Alice Customer <alice@customer.example>",
    to: str = "support@example.com",
    subject: str = "Printer on fire",
    body: str = "Hello,\n\nthe printer is on fire.\n\nAlice\n",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    cc: str | None = None,
    headers: dict[str, str] | None = None,
    date: datetime = T0,
) -> bytes:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    if cc:
        mail["Cc"] = cc
    mail["Subject"] = subject
    mail["Date"] = format_datetime(date)
    if message_id != "":
        mail["Message-ID"] = message_id or f"<{uuid.uuid4().hex}@customer.example>"
    if in_reply_to:
        mail["In-Reply-To"] = in_reply_to
    if references:
        mail["References"] = references
    for name, value in (headers or {}).items():
        mail[name] = value
    mail.set_content(body)
    # CRLF, as on the wire: smtplib sends bytes unchanged.
    return mail.as_bytes(policy=SMTP)


def bench_corpus(dest: Path, count: int) -> list[Path]:
    """`count` mails of bench/corpus.py's deterministic corpus (threads in each client
    style and language, tags, quoted history, auto-replies, bounces), written to `dest`."""
    spec = importlib.util.spec_from_file_location("bench_corpus", REPO / "bench" / "corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    paths: list[Path] = module.generate(dest, count)
    return paths
