"""Chaos: two `maild run` instances on one PostgreSQL, `kill -9` at random moments, a flaky relay.

Client threads send most mails over SMTP to a random instance and resend whatever got no
250; meanwhile the rest are APPENDed to an IMAP inbox (a private Dovecot) that both
instances are configured to poll, one at a time by lease. A driver kills an instance at
seeded random moments (about half the kills aimed at the IMAP poller as it spools a batch)
and restarts it; the relay answers 451 or drops the connection now and then. Afterwards
nothing accepted or appended is lost or doubled, the inbox is empty and every appended
mail sits once in the processed folder, no ticket number is used twice, every
acknowledgement was delivered and recorded sent once, and no SLA stage fired twice.

PostgreSQL only: SQLite has one writer, so two instances on it prove nothing.
The CI size runs in well under a minute; the long run is
`MAILD_CHAOS_MAILS=5000 MAILD_CHAOS_KILLS=50 pytest -s tests/test_chaos.py`
(MAILD_CHAOS_SEED replays a run, MAILD_CHAOS_IMAP_SHARE sets the part that goes by IMAP).
"""

from __future__ import annotations

import json
import os
import queue
import random
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.chaos_sink import FlakySink
from tests.conftest import _truncate, make_mail
from tests.daemon import Daemon, DaemonConfig, write_config
from tests.dovecot import Dovecot, mailbox, running_dovecot

MAILS = int(os.environ.get("MAILD_CHAOS_MAILS", "240"))
KILLS = int(os.environ.get("MAILD_CHAOS_KILLS", "4"))
SEED = int(os.environ.get("MAILD_CHAOS_SEED", "9"))
IMAP_MAILS = round(MAILS * float(os.environ.get("MAILD_CHAOS_IMAP_SHARE", "0.2")))
SMTP_MAILS = MAILS - IMAP_MAILS
INSTANCES = 2
CLIENTS = 4
SUPPORT = "support@example.com"
# "maild/processed" with Dovecot's Maildir separator.
PROCESSED = "maild.processed"
# Every ticket reaches its first stage 0.6 s after it is opened, so the two instances'
# sweeps race for every ticket while the instances are being killed.
SLA = """
policies:
  chaos:
    time: calendar
    match: {}
    targets:
      first_response: 1m
    escalation:
      - name: early
        target: first_response
        at: 1%
"""


def mail_id(i: int) -> str:
    return f"<chaos-{SEED}-{i}@customer.example>"


def chaos_mail(i: int) -> bytes:
    return make_mail(
        sender=f"Customer {i} <chaos-{SEED}-{i}@customer.example>",
        subject=f"Chaos {i}",
        message_id=mail_id(i),
    )


def imap_mailbox(server: Dovecot) -> str:
    """The `[[imap]]` table both instances share; its short lease lets the other instance
    take over a killed holder's mailbox within seconds."""
    values = mailbox(server, address=SUPPORT)
    return "[[imap]]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


class Instance:
    """One `maild run` slot: the config and ports stay, the process is replaced."""

    def __init__(self, config: DaemonConfig, cwd: Path) -> None:
        self.config = config
        self.cwd = cwd
        self.daemon = Daemon(config, cwd).start()

    @property
    def pid(self) -> int | None:
        return None if self.daemon.process is None else self.daemon.process.pid

    def kill_and_restart(self) -> None:
        self.daemon.kill()
        # A fresh Daemon: the old one's logged `ready` must not count for the new life.
        self.daemon = Daemon(self.config, self.cwd).start(timeout=60)


def imap_spooled(event: dict[str, Any]) -> bool:
    return event.get("event") == "imap spooled"


def imap_news(event: dict[str, Any]) -> bool:
    """A spooled batch, or the reason why the poller will not spool the next one."""
    return event.get("event") in ("imap spooled", "imap lease lost", "imap error")


@dataclass
class Kills:
    of_poller: int = 0
    # Of the poller, the moment it logged a spooled batch: after its spool commit, about
    # when it moves the batch out of the inbox.
    after_spooled: int = 0


@dataclass
class Clients:
    """Client threads sharing one queue of mails; a mail is done when it gets a 250."""

    ports: list[int]
    todo: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    acked: set[str] = field(default_factory=set)
    attempts: int = 0
    refused: int = 0
    errors: list[BaseException] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def run(self, number: int) -> None:
        rng = random.Random(f"{SEED}-client-{number}")
        try:
            while True:
                try:
                    message_id, raw = self.todo.get_nowait()
                except queue.Empty:
                    return
                self._send(rng, message_id, raw)
        except BaseException as exc:  # surfaced by the test thread
            with self.changed:
                self.errors.append(exc)
                self.changed.notify_all()

    def _send(self, rng: random.Random, message_id: str, raw: bytes) -> None:
        target = rng.randrange(len(self.ports))
        deadline = time.monotonic() + 120
        failed_in_a_row = 0
        sender = message_id.strip("<>").split("@")[0] + "@customer.example"
        got_250 = False
        while not got_250:
            with self.changed:
                self.attempts += 1
            try:
                with smtplib.SMTP("127.0.0.1", self.ports[target], timeout=30) as client:
                    client.sendmail(sender, [SUPPORT], raw)
                    # Accepted now, even if the instance dies before QUIT.
                    got_250 = True
            except (OSError, smtplib.SMTPException):
                if got_250:
                    break
                with self.changed:
                    self.refused += 1
                assert time.monotonic() < deadline, f"{message_id}: no instance took it"
                target = (target + 1) % len(self.ports)
                failed_in_a_row += 1
                if failed_in_a_row >= len(self.ports):
                    # Every instance refused (one restarting, the other pushing back):
                    # back off briefly instead of spinning.
                    time.sleep(0.05)
                    failed_in_a_row = 0
        with self.changed:
            self.acked.add(message_id)
            self.changed.notify_all()

    def wait_acked(self, n: int) -> None:
        with self.changed:
            self.changed.wait_for(lambda: len(self.acked) >= n or bool(self.errors), timeout=300)


@dataclass
class Appender:
    """APPENDs the IMAP share to the inbox, spread over the SMTP run so that it meets the kills."""

    server: Dovecot
    mails: list[int]
    # The Message-IDs of the APPENDs the server confirmed.
    appended: list[str] = field(default_factory=list)
    begun: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def run(self, clients: Clients) -> None:
        try:
            with self.server.client() as client:
                for k, i in enumerate(self.mails):
                    clients.wait_acked(k * SMTP_MAILS // len(self.mails))
                    self.begun += 1
                    client.append("INBOX", chaos_mail(i))
                    self.appended.append(mail_id(i))
        except BaseException as exc:  # surfaced by the test thread
            self.errors.append(exc)

    def more_to_come(self) -> bool:
        """True if an APPEND is still to begin after this call."""
        return self.begun < len(self.mails)


def drive(
    instances: list[Instance],
    clients: Clients,
    rng: random.Random,
    engine: Engine,
    appender: Appender,
    kills: Kills,
    errors: list[BaseException],
) -> None:
    """Kill an instance once the run passes each random point, then restart it.

    About half the kills (a seeded choice) aim at IMAP: they kill the instance polling the
    mailbox as soon as it logs a spooled batch, if mail is still to be appended. A kill at a
    random moment almost never falls in the few milliseconds between the poller's spool
    commit and its move."""
    try:
        points = sorted(rng.sample(range(SMTP_MAILS // 10, SMTP_MAILS * 9 // 10), KILLS))
        for point in points:
            clients.wait_acked(point)
            # Drawn whichever way this kill goes, so that a seed replays the same choices.
            aimed, delay, choice = rng.random() < 0.5, rng.uniform(0, 0.2), rng.randrange(INSTANCES)
            poller = polling(instances, engine)
            if aimed and poller is not None:
                spooled = poller.daemon.count(imap_spooled)
                news = poller.daemon.count(imap_news)
                # Asked after counting: a mail appended from now on brings news.
                if appender.more_to_come():
                    poller.daemon.wait_for(imap_news, n=news + 1, timeout=60)
                if poller.daemon.count(imap_spooled) > spooled:
                    kills.after_spooled += 1
                victim = poller
            else:
                # The exact moment is this test's seeded input, not a wait for anything.
                time.sleep(delay)
                poller = polling(instances, engine)
                victim = instances[choice]
            if victim is poller:
                kills.of_poller += 1
            victim.kill_and_restart()
    except BaseException as exc:  # surfaced by the test thread
        errors.append(exc)


def scalar(engine: Engine, sql: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(sql)).scalar_one())


def polling(instances: list[Instance], engine: Engine) -> Instance | None:
    """The instance holding the mailbox's lease, if a live one does (maild names a holder
    host:pid:random)."""
    with engine.connect() as connection:
        holder = connection.execute(text("SELECT holder FROM imap_lease")).scalar()
    pid = None if holder is None else int(str(holder).rsplit(":", 2)[1])
    return next((instance for instance in instances if instance.pid == pid), None)


def messages_in(client: IMAPClient, folder: str) -> int:
    if not client.folder_exists(folder):
        return 0
    return int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])


def wait_until_settled(
    engine: Engine, server: Dovecot, tickets_wanted: int, timeout: float
) -> None:
    """The instances are other processes: watch the inbox until every appended mail has left
    it, and the database until every mail is processed, every acknowledgement is out of the
    queue and every ticket's SLA stage has fired."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while True:
            # The inbox first: once it is empty every IMAP mail was committed to the spool
            # (maild moves a mail only after that), so the database read after it sees them.
            state = (
                messages_in(client, "INBOX"),
                messages_in(client, PROCESSED),
                scalar(engine, "SELECT count(*) FROM spool WHERE state = 'pending'"),
                scalar(engine, "SELECT count(*) FROM outbox WHERE state = 'pending'"),
                scalar(engine, "SELECT count(*) FROM ticket"),
                scalar(engine, "SELECT count(DISTINCT ticket_id) FROM sla_stage"),
            )
            inbox, processed, spool_pending, outbox_pending, tickets, staged = state
            if (
                inbox == spool_pending == outbox_pending == 0
                and processed >= IMAP_MAILS
                and tickets == staged == tickets_wanted
            ):
                return
            assert time.monotonic() < deadline, (
                f"seed {SEED}: not settled (inbox, processed folder, spool pending, outbox "
                f"pending, tickets, tickets with a stage) = {state}"
            )
            time.sleep(0.1)


def imap_end_state(server: Dovecot) -> tuple[int, Counter[str], int]:
    """Mails left in the inbox, the Message-IDs in the processed folder, and how many of
    those are marked read."""
    with server.client() as client:
        left = messages_in(client, "INBOX")
        if not client.folder_exists(PROCESSED):
            return left, Counter(), 0
        client.select_folder(PROCESSED, readonly=True)
        fetched = client.fetch(
            client.search("ALL"), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]
        ).values()
    header = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
    ids = Counter(
        str(message_from_bytes(item[header], policy=default)["Message-ID"]) for item in fetched
    )
    return left, ids, sum(1 for item in fetched if b"\\Seen" in item[b"FLAGS"])


def rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql))]


@pytest.fixture
def chaos_db(pg_url: str) -> Iterator[Engine]:
    _truncate(pg_url)
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    yield from running_dovecot()


# The long run outlasts the suite's default per-test timeout.
@pytest.mark.timeout(max(120, MAILS * 0.1 + KILLS * 5))
def test_two_instances_killed_at_random_lose_and_double_nothing(
    tmp_path: Path, pg_url: str, chaos_db: Engine, dovecot: Dovecot
) -> None:
    rng = random.Random(SEED)
    by_imap = sorted(random.Random(f"{SEED}-imap").sample(range(MAILS), IMAP_MAILS))
    sink = FlakySink(random.Random(f"{SEED}-relay")).start()
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "sla.yaml").write_text(SLA)
    instances: list[Instance] = []
    try:
        for n in range(INSTANCES):
            cwd = tmp_path / f"instance-{n}"
            cwd.mkdir()
            config = write_config(
                cwd,
                pg_url,
                paths={"rules": str(rules)},
                outbound={
                    "enabled": True,
                    "port": sink.port,
                    "interval": 0.2,
                    "retry_base": 0.2,
                    "retry_max": 1.0,
                    # A sender killed mid-send holds its rows this long.
                    "claim_seconds": 2.0,
                },
                sla={"interval": 0.5},
                daemon={"poll_interval": 0.2},
            )
            with config.path.open("a") as handle:
                handle.write(imap_mailbox(dovecot))
            instances.append(Instance(config, cwd))

        clients = Clients([instance.config.smtp_port for instance in instances])
        imap_set = set(by_imap)
        for i in range(MAILS):
            if i not in imap_set:
                clients.todo.put((mail_id(i), chaos_mail(i)))
        errors: list[BaseException] = []
        appender = Appender(dovecot, by_imap)
        kills = Kills()
        driver = threading.Thread(
            target=drive, args=(instances, clients, rng, chaos_db, appender, kills, errors)
        )
        appending = threading.Thread(target=appender.run, args=(clients,))
        threads = [threading.Thread(target=clients.run, args=(k,)) for k in range(CLIENTS)]
        started = time.monotonic()
        driver.start()
        appending.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        driver.join()
        appending.join()
        assert not clients.errors, f"seed {SEED}: a client failed: {clients.errors[0]!r}"
        assert not errors, f"seed {SEED}: driver failed: {errors[0]!r}"
        assert not appender.errors, f"seed {SEED}: APPEND failed: {appender.errors[0]!r}"
        appended = appender.appended
        wait_until_settled(chaos_db, dovecot, MAILS, timeout=60 + MAILS * 0.05)
        elapsed = time.monotonic() - started
        exit_codes = [instance.daemon.terminate() for instance in instances]
    finally:
        for instance in instances:
            instance.daemon.stop_quietly()
        sink.stop()

    inbox_left, in_processed, marked_read = imap_end_state(dovecot)
    stored = Counter(
        str(message_id)
        for (message_id,) in rows(
            chaos_db, "SELECT message_id FROM message WHERE message_id LIKE '<chaos-%'"
        )
    )
    lost = sorted((clients.acked | set(appended)) - set(stored))
    duplicated = sorted(m for m, count in stored.items() if count > 1)
    numbers_reused = rows(chaos_db, "SELECT number FROM ticket GROUP BY number HAVING count(*) > 1")
    outbox = rows(chaos_db, "SELECT message_id, state, ticket_id FROM outbox")
    acks_per_ticket = Counter(ticket_id for _, _, ticket_id in outbox)
    stages_twice = rows(
        chaos_db,
        "SELECT ticket_id, target, cycle, stage, occurrence FROM sla_stage"
        " GROUP BY ticket_id, target, cycle, stage, occurrence HAVING count(*) > 1",
    )
    quarantined = rows(chaos_db, "SELECT id, reason FROM spool WHERE state = 'quarantined'")
    # Spooled, but the 250 never reached the client (resent), or not moved out of the inbox
    # before a kill (fetched again): recognised on processing.
    deduplicated = scalar(chaos_db, "SELECT count(*) FROM spool WHERE state = 'ignored'")
    refetched = scalar(chaos_db, "SELECT count(*) FROM spool WHERE source = 'imap'") - len(appended)
    delivered = sink.handler.delivered
    print(
        f"\nchaos seed={SEED}: {SMTP_MAILS} mails sent over SMTP and {len(appended)} appended "
        f"over IMAP to {INSTANCES} instances, {len(clients.acked)} got 250 "
        f"({clients.attempts} attempts, {clients.refused} refused or cut off), {KILLS} "
        f"kill -9s ({kills.of_poller} of the IMAP poller, {kills.after_spooled} of them as it "
        f"logged a spooled batch); lost {len(lost)}, "
        f"duplicated {len(duplicated)} ({deduplicated} copies ignored as duplicates, "
        f"{refetched} of them fetched again over IMAP); IMAP inbox left {inbox_left}, "
        f"processed folder {sum(in_processed.values())} ({len(in_processed)} distinct); "
        f"{len(outbox)} acknowledgements queued, "
        f"{sum(1 for _, state, _ in outbox if state == 'sent')} recorded sent, "
        f"{sum(delivered.values())} deliveries accepted by the relay "
        f"({sum(c - 1 for c in delivered.values())} repeated), relay answered 451 "
        f"{sink.handler.answered_451}x and dropped {sink.handler.dropped}x; "
        f"{len(stages_twice)} SLA stages fired twice; {elapsed:.1f} s"
    )

    context = f"seed {SEED}"
    assert len(clients.acked) == SMTP_MAILS, context
    assert sorted(appended) == sorted(mail_id(i) for i in by_imap), context
    assert lost == [], f"{context}: accepted but lost: {lost[:10]}"
    assert duplicated == [], f"{context}: in two ticket messages: {duplicated[:10]}"
    assert quarantined == [], f"{context}: {quarantined[:10]}"
    assert numbers_reused == [], context
    # Each new mail opened its own ticket and queued exactly one acknowledgement.
    assert len(acks_per_ticket) == MAILS and set(acks_per_ticket.values()) == {1}, context
    assert [row for row in outbox if row[1] != "sent"] == [], context
    assert [m for m, _, _ in outbox if delivered[str(m)] < 1] == [], context
    assert stages_twice == [], f"{context}: {stages_twice[:10]}"
    assert exit_codes == [0] * INSTANCES, context
    # After its commit maild moves a mail out of the inbox, still unread: each appended
    # mail is in the processed folder exactly once.
    assert inbox_left == 0, context
    assert in_processed == Counter(appended), context
    assert marked_read == 0, context
