"""The database goes away under two running `maild run` instances and comes back (issue 9).

A private PostgreSQL cluster (tests/private_postgres.py; the shared server is left alone)
is stopped and held down while client threads keep sending mail over SMTP, and later
restarted with `-m immediate`, as after a crash. While it is down both instances answer
451 and report 503 on /healthz; afterwards the same processes, never restarted, accept and
file mail again, and every mail that got a 250 is in exactly one ticket message.
"""

from __future__ import annotations

import itertools
import json
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from maild.cli import EX_OK, main
from tests.conftest import make_mail
from tests.daemon import Daemon, write_config
from tests.private_postgres import PrivatePostgres, private_postgres
from tests.test_chaos import rows, scalar

SUPPORT = "support@example.com"
CLIENTS = 4
# Each client's pause between two mails: steady traffic, not a flood the two workers
# would need long to file on a shared 2-CPU machine.
PACE = 0.05
# Mails to see accepted before each disruption and after each recovery.
BETWEEN = 20


def mail_id(number: int) -> str:
    return f"<pg-restart-{number}@customer.example>"


def send(port: int, message_id: str) -> int:
    """Offer one mail; the reply code that decided it (0: no SMTP answer at all)."""
    sender = message_id.strip("<>").split("@")[0] + "@customer.example"
    raw = make_mail(sender=sender, subject=f"Case {message_id}", message_id=message_id)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(sender, [SUPPORT], raw)
            # Accepted now, whatever happens before QUIT.
            return 250
    except smtplib.SMTPRecipientsRefused as exc:
        return int(exc.recipients[SUPPORT][0])
    except smtplib.SMTPResponseException as exc:
        return int(exc.smtp_code)
    except (OSError, smtplib.SMTPException):
        return 0


@dataclass
class Traffic:
    """Client threads sending new mails one after another until `stop`; a mail refused
    with a 4xx (or cut off) is offered again, to the other instance, as an MTA would.
    A 5xx is a bounce for the customer: recorded, and never retried."""

    ports: list[int]
    stop: threading.Event = field(default_factory=threading.Event)
    acked: set[str] = field(default_factory=set)
    accepted_by: Counter[int] = field(default_factory=Counter)
    refusals: Counter[int] = field(default_factory=Counter)
    bounced: list[tuple[str, int]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    _numbers: Iterator[int] = field(default_factory=itertools.count)

    def run(self, client: int) -> None:
        try:
            while not self.stop.is_set():
                self._deliver(mail_id(next(self._numbers)), client % len(self.ports))
                self.stop.wait(PACE)
        except BaseException as exc:  # surfaced by the test thread
            with self.changed:
                self.errors.append(exc)
                self.changed.notify_all()

    def _deliver(self, message_id: str, target: int) -> None:
        # Once stopped, a mail still refused is given up: it never got a 250.
        while True:
            port = self.ports[target]
            code = send(port, message_id)
            with self.changed:
                if code == 250:
                    self.acked.add(message_id)
                    self.accepted_by[port] += 1
                    self.changed.notify_all()
                    return
                if code >= 500:
                    self.bounced.append((message_id, code))
                    return
                self.refusals[code] += 1
            if self.stop.wait(PACE):
                return
            target = (target + 1) % len(self.ports)

    def wait_acked(self, n: int, timeout: float = 60.0) -> None:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: len(self.acked) >= n or bool(self.errors), timeout=timeout
            )
        assert ok and not self.errors, (len(self.acked), n, self.errors[:1])


def health(port: int) -> tuple[int, dict[str, object]]:
    """/healthz: the status code and the JSON body (the raw text when it is not JSON)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            code, body = int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            code, body = int(exc.code), exc.read()
    try:
        return code, json.loads(body)
    except ValueError:
        return code, {"body": body.decode(errors="replace")}


def healthy(port: int) -> bool:
    return health(port)[0] == 200


def poll(what: str, done: Callable[[], bool], timeout: float = 30.0) -> None:
    """Ask again until `done()`: these are answers of other processes, nothing to wait on."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def offer_until(code: int, port: int, message_id: str, timeout: float = 30.0) -> list[int]:
    """Offer one mail again and again until the answer is `code`; every answer, in order."""
    answers = [send(port, message_id)]
    deadline = time.monotonic() + timeout
    while answers[-1] != code:
        assert time.monotonic() < deadline, f"never {code} from {port}: {answers}"
        time.sleep(0.05)
        answers.append(send(port, message_id))
    return answers


def family(daemon: Daemon) -> set[int]:
    """The daemon's process and its children (the worker processes): none may die or be
    replaced."""
    assert daemon.process is not None
    pid = daemon.process.pid
    children: set[int] = set()
    # Linux: each thread lists the children it started.
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(child) for child in (task / "children").read_text().split())
    return {pid, *children}


# The parts of an instance that each meet a database outage on their own, and say so.
NOTICING = ("maild.worker", "maild.outbox")


def said_by(logger: str, said: str) -> Callable[[dict[str, Any]], bool]:
    def matches(event: dict[str, Any]) -> bool:
        return event.get("logger") == logger and event.get("event") == said

    return matches


def outage_of(logger: str) -> Callable[[dict[str, Any]], bool]:
    return said_by(logger, "database unavailable")


def outages(daemon: Daemon) -> dict[str, int]:
    return {logger: daemon.count(outage_of(logger)) for logger in NOTICING}


def processed(daemon: Daemon) -> int:
    return daemon.count(lambda e: e.get("event") == "mail processed")


@pytest.fixture
def cluster() -> Iterator[PrivatePostgres]:
    with private_postgres() as started:
        yield started


@pytest.fixture
def maild_db(cluster: PrivatePostgres) -> Iterator[str]:
    admin = create_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text('CREATE DATABASE "maild"'))
    admin.dispose()
    yield cluster.url("maild")


@pytest.fixture
def engine(maild_db: str) -> Iterator[Engine]:
    # pre_ping: the test's own connections outlive the restarts too.
    engine = create_engine(maild_db, pool_pre_ping=True)
    yield engine
    engine.dispose()


def test_instances_ride_out_a_database_restart(
    tmp_path: Path, maild_db: str, cluster: PrivatePostgres, engine: Engine
) -> None:
    started = time.monotonic()
    # Seconds from the start at each stage, for the summary line.
    marks: dict[str, float] = {}

    def mark(stage: str) -> None:
        marks[stage] = round(time.monotonic() - started, 1)

    daemons: list[Daemon] = []
    traffic: Traffic | None = None
    threads: list[threading.Thread] = []
    try:
        for n in range(2):
            cwd = tmp_path / f"instance-{n}"
            cwd.mkdir()
            # The outbox sender tries every 0.2 s too, so it meets each outage many times.
            config = write_config(
                cwd, maild_db, daemon={"poll_interval": 0.2}, outbound={"interval": 0.2}
            )
            daemons.append(Daemon(config, cwd))
        assert main(["db", "upgrade", "--config", str(daemons[0].config)]) == EX_OK
        with ThreadPoolExecutor() as pool:  # each start waits for its `ready`
            list(pool.map(Daemon.start, daemons))
        # Worker processes start after `ready`, slowly on a busy machine; mail sent before
        # they run would only pile up.
        for daemon in daemons:
            daemon.wait_for(lambda e: e.get("event") == "worker started", timeout=60)
        mark("workers started")
        traffic = Traffic([d.smtp_port for d in daemons])
        threads = [threading.Thread(target=traffic.run, args=(k,)) for k in range(CLIENTS)]
        for thread in threads:
            thread.start()
        traffic.wait_acked(BETWEEN)
        # Both workers are up and hold pooled connections that the restart will break.
        for daemon in daemons:
            daemon.processed(1)
        families = [family(d) for d in daemons]
        assert all(len(f) > 1 for f in families), f"no worker processes: {families}"

        # Down and held down: every instance refuses new mail with 451 and is unhealthy.
        # Counted before the stop: each part logs an outage once, maybe at once.
        down_before = [outages(d) for d in daemons]
        cluster.stop("fast")
        mark("stopped")
        for daemon in daemons:
            answers = offer_until(
                451, daemon.smtp_port, f"<pg-restart-probe-{daemon.smtp_port}@x.example>"
            )
            assert [a for a in answers if a == 250 or a >= 500] == [], answers
            code, status = health(daemon.http_port)
            assert (code, status.get("database")) == (503, "unavailable"), status
        # The workers and outbox senders meet the outage too (each tries every 0.2 s), and
        # carry on; the database stays down until each has, or a busy machine could let
        # one sleep through a short outage and have nothing to say of it.
        for daemon, before in zip(daemons, down_before, strict=True):
            for logger in NOTICING:
                daemon.wait_for(outage_of(logger), n=before[logger] + 1)
        cluster.start()
        mark("started")

        for daemon in daemons:
            poll(f"{daemon.http_port} healthy", partial(healthy, daemon.http_port))
        since_restart = (Counter(traffic.accepted_by), [processed(d) for d in daemons])
        traffic.wait_acked(len(traffic.acked) + BETWEEN)

        # Killed without a checkpoint, in the middle of the traffic, and back at once.
        cluster.restart("immediate")
        mark("restarted")
        traffic.wait_acked(len(traffic.acked) + BETWEEN)
        # Each instance files mail again: with the traffic still coming, a worker still
        # in its backoff (up to 5 s) gets its turn, where after the traffic the other
        # worker could have filed everything first.
        for daemon, before in zip(daemons, since_restart[1], strict=True):
            daemon.processed(before + 1, timeout=30)
        traffic.stop.set()
        for thread in threads:
            thread.join()
        assert not traffic.errors, traffic.errors[0]

        poll(
            "every spooled mail filed",
            lambda: scalar(engine, "SELECT count(*) FROM spool WHERE state = 'pending'") == 0,
            timeout=60,
        )
        mark("settled")
        alive = [d.process is not None and d.process.poll() is None for d in daemons]
        assert alive == [True, True]
        # The worker and the outbox sender each say when the database is back (a worker
        # may still be in its backoff, up to 5 s, while the other one files everything),
        # and logged each outage once, not once per attempt (at most the two outages).
        for daemon in daemons:
            for logger in NOTICING:
                daemon.wait_for(said_by(logger, "database available again"), timeout=30)
                said = Counter(e["event"] for e in daemon.events if e.get("logger") == logger)
                assert 1 <= said["database unavailable"] <= 2, (logger, said)
        assert [family(d) for d in daemons] == families
        accepted_since = traffic.accepted_by - since_restart[0]
        processed_since = [processed(d) - n for d, n in zip(daemons, since_restart[1], strict=True)]
        exit_codes = [daemon.terminate() for daemon in daemons]
    finally:
        if traffic is not None:
            traffic.stop.set()
        for thread in threads:
            thread.join()
        for daemon in daemons:
            daemon.stop_quietly()

    stored = Counter(
        str(message_id)
        for (message_id,) in rows(
            engine, "SELECT message_id FROM message WHERE message_id LIKE '<pg-restart-%'"
        )
    )
    states = {
        str(state): int(str(count))
        for state, count in rows(engine, "SELECT state, count(*) FROM spool GROUP BY state")
    }
    print(
        f"\npg restart: {len(traffic.acked)} mails got 250, refusals by code "
        f"{dict(traffic.refusals)}, {sum(stored.values())} ticket messages, spool {states}, "
        f"accepted since the restart per instance {dict(accepted_since)}, processed "
        f"{processed_since}; seconds: {marks}"
    )
    assert traffic.bounced == [], traffic.bounced[:10]
    # The outages reached the clients as 451s to retry: no dropped connection, no bounce.
    assert set(traffic.refusals) == {451}, traffic.refusals
    assert sorted(traffic.acked - set(stored)) == [], "accepted but lost"
    assert [m for m, count in stored.items() if count > 1] == [], "in two ticket messages"
    assert "quarantined" not in states, states
    assert sorted(accepted_since) == sorted(traffic.ports)
    assert all(n > 0 for n in processed_since), processed_since
    assert exit_codes == [0, 0]
