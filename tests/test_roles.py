"""`maild run --role …`: instances on one PostgreSQL database that split the work.

Real daemons as subprocesses; what an instance must not do is shown by the state it leaves
in the database and by the events it never logs.
"""

from __future__ import annotations

import smtplib
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from maild import spool
from maild.app import App
from maild.cli import EX_OK, EX_USAGE, main
from maild.clock import SystemClock
from maild.config import load_settings
from maild.types import Envelope
from tests.conftest import make_mail
from tests.daemon import Daemon, DaemonConfig, write_config
from tests.test_outbox import NO_RULES, Sink
from tests.test_smtp import export, message_ids

# Several instances on one database is a PostgreSQL setup (SKIP LOCKED claims).
postgres_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def start(daemons: list[Daemon], config: DaemonConfig, cwd: Path, *args: str) -> Daemon:
    daemon = Daemon(config, cwd, args).start()
    daemons.append(daemon)
    return daemon


def spool_states(db_url: str) -> list[str]:
    engine = create_engine(db_url)
    with engine.connect() as connection:
        states = list(connection.execute(text("SELECT state FROM spool ORDER BY id")).scalars())
    engine.dispose()
    return states


def refuses_smtp(port: int) -> bool:
    try:
        smtplib.SMTP("127.0.0.1", port, timeout=5).quit()
    except ConnectionRefusedError:
        return True
    return False


def processed(daemon: Daemon) -> int:
    return daemon.count(lambda e: e.get("event") == "mail processed")


@postgres_only
def test_receiver_spools_and_processor_files(
    tmp_path: Path, db_url: str, daemons: list[Daemon]
) -> None:
    (tmp_path / "edge").mkdir()
    (tmp_path / "core").mkdir()
    edge_config = write_config(tmp_path / "edge", db_url)
    core_config = write_config(tmp_path / "core", db_url)
    edge = start(daemons, edge_config, tmp_path / "edge", "--role", "receive")
    ids = [f"<role-{i}@customer.example>" for i in range(5)]
    with smtplib.SMTP("127.0.0.1", edge.smtp_port, timeout=30) as client:
        for message_id in ids:
            client.sendmail(
                "alice@customer.example",
                ["support@example.com"],
                make_mail(message_id=message_id, subject=f"Case {message_id}"),
            )
    assert spool_states(db_url) == ["pending"] * 5

    core = start(daemons, core_config, tmp_path / "core", "--role", "process", "--workers", "2")
    assert refuses_smtp(core.smtp_port)
    core.processed(5)
    assert spool_states(db_url) == ["done"] * 5
    assert processed(edge) == 0
    assert sorted(message_ids(export(tmp_path / "core", core))) == sorted(ids)
    (ready,) = [e for e in core.events if e.get("event") == "ready"]
    assert (ready["role"], ready["workers"]) == ("process", 2)
    assert edge.terminate() == 0
    assert core.terminate() == 0


@postgres_only
def test_sender_sends_outbox_and_nothing_else(
    tmp_path: Path, db_url: str, daemons: list[Daemon]
) -> None:
    sink = Sink().start()
    try:
        outbound: dict[str, Any] = {
            "enabled": True,
            "host": "127.0.0.1",
            "port": sink.port,
            "interval": 0.2,
        }
        config = write_config(tmp_path, db_url, outbound=outbound, paths=NO_RULES)
        mail = tmp_path / "first.eml"
        mail.write_bytes(make_mail(message_id="<queued@customer.example>"))
        # `maild ingest` files the mail and queues its acknowledgement; it sends nothing.
        assert main(["ingest", "--config", str(config.path), str(mail)]) == EX_OK
        app = App(load_settings(config.path))
        try:
            spool.put(
                app.db,
                make_mail(message_id="<waiting@customer.example>"),
                Envelope("alice@customer.example", ("support@example.com",)),
                "smtp",
                SystemClock().now(),
            )
        finally:
            app.close()

        sender = start(daemons, config, tmp_path, "--role", "send")
        _, rcpts, raw = sink.handler.accepted.get(timeout=20)
        assert rcpts == ["alice@customer.example"]
        ack = message_from_bytes(raw, policy=default)
        assert ack["In-Reply-To"] == "<queued@customer.example>"
        assert refuses_smtp(sender.smtp_port)
        assert sender.terminate() == 0
        assert processed(sender) == 0
        assert spool_states(db_url) == ["done", "pending"]
    finally:
        sink.stop()


@pytest.mark.parametrize(
    "args", [["--role", "edge"], ["--workers", "-1"], ["--workers", "65"], ["--workers", "x"]]
)
def test_bad_role_or_worker_count_is_a_usage_error(args: list[str]) -> None:
    assert main(["run", *args]) == EX_USAGE
