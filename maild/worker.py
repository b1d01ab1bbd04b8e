"""Processing workers: drain the spool whenever woken, and every poll interval regardless.

A worker runs as a thread of the daemon or as a separate process (the default, so parsing
never competes with the listener for the GIL). A worker process dies with its parent:
its work is transactional, so being killed mid-mail only rolls that mail back.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.queues
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from maild import logs, spool
from maild.app import App
from maild.config import Settings
from maild.db.session import Database
from maild.errors import TemporaryFailure
from maild.lifetime import die_with_parent
from maild.logs import event
from maild.pipeline.limits import MailLimits
from maild.pipeline.parse import Parsed
from maild.pipeline.parse_ahead import ParseAhead
from maild.pipeline.process import Outcome, Processor
from maild.rules import RuleHolder

log = logging.getLogger("maild.worker")

Report = Callable[[Outcome, float], None]

# Longest pause between two attempts to reach a database that is away: also the longest
# a worker may lag behind the database's return.
_MAX_BACKOFF = 5.0


class Generation(Protocol):
    """A counter the daemon bumps when the rules changed (multiprocessing.Value fits)."""

    value: int


class Counter:
    """A Generation for a worker thread."""

    def __init__(self) -> None:
        self.value = 0


class Flag(Protocol):
    """threading.Event and multiprocessing.Event both fit."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> bool: ...


def work(
    processor: Processor,
    wake: Flag,
    stop: Flag,
    report: Report,
    poll_interval: float,
    alive: Callable[[], bool] = lambda: True,
    rules: tuple[Generation, RuleHolder] | None = None,
    ahead: Ahead | None = None,
) -> None:
    """Drain, then sleep until woken or the poll interval passes; until `stop` is set.

    `rules`: when the generation moves, reload the holder before the next mail.
    `ahead`: parse the next mails in other processes while this one files the current.
    """
    backoff = poll_interval
    down_since: float | None = None
    seen = rules[0].value if rules else 0
    event(log, "worker started")
    with processor.pinned():
        while not stop.is_set() and alive():
            wake.clear()
            if rules is not None and rules[0].value != seen:
                seen = rules[0].value
                rules[1].reload()
            try:
                if ahead is None:
                    _drain(processor, stop, report)
                else:
                    _drain_parsing_ahead(processor, ahead, stop, report)
            except TemporaryFailure as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    event(log, "database unavailable", logging.WARNING, error=str(exc))
                # Not `wake`: the poll timer and the listener set it all the time, and with
                # the database away there is nothing they could have brought.
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            if down_since is not None:
                event(
                    log,
                    "database available again",
                    down_seconds=round(time.monotonic() - down_since, 1),
                )
                down_since = None
                backoff = poll_interval
            wake.wait(poll_interval)


def _drain(processor: Processor, stop: Flag, report: Report) -> None:
    last = 0
    while not stop.is_set():
        started = time.perf_counter()
        outcome = processor.process_next(after_id=last)
        if outcome is None:
            return
        report(outcome, time.perf_counter() - started)
        last = outcome.spool_id


@dataclass
class Ahead:
    """Parse-ahead for a worker on SQLite: the spool to peek at and the parsing processes.

    On SQLite a worker's database work and its parsing otherwise take turns on one core
    while the other idles; parsing the next batch elsewhere overlaps them, as `maild
    ingest` does. (On PostgreSQL, instances and workers peeking at the same pending rows
    would parse them twice; there, more workers are the way to use more cores. The
    daemon's thread worker uses it on both: a thread cannot cut a slow parse short.)
    """

    db: Database
    parser: ParseAhead[int]
    batch: int = 16
    batch_bytes: int = 8 << 20


def _drain_parsing_ahead(processor: Processor, ahead: Ahead, stop: Flag, report: Report) -> None:
    def file(spool_id: int, parsed: Parsed) -> None:
        started = time.perf_counter()
        # None: another worker or a `quarantine retry` got there first; nothing to do.
        outcome = processor.process(spool_id, parsed)
        if outcome is not None:
            report(outcome, time.perf_counter() - started)

    last = 0
    while not stop.is_set():
        batch = spool.peek_many(
            ahead.db, after_id=last, limit=ahead.batch, max_bytes=ahead.batch_bytes
        )
        if not batch:
            break
        last = batch[-1].id
        for done in ahead.parser.submit([p.id for p in batch], [p.raw for p in batch]):
            if stop.is_set():
                return
            file(*done)
    for done in ahead.parser.finish():
        if stop.is_set():
            return
        file(*done)


def process_main(
    settings: Settings,
    wake: Flag,
    stop: Flag,
    results: multiprocessing.queues.Queue[tuple[str, float, str | None]],
    generation: Generation,
) -> None:
    """Entry point of a worker process."""
    die_with_parent()
    # The parent decides when to stop (and lets the current mail finish); a Ctrl-C on the
    # terminal reaches the whole process group and must not cut a transaction short here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(settings.logging.format, settings.logging.level)
    app = App(settings)
    parent = multiprocessing.parent_process()
    limits = MailLimits.of(settings.mail)
    ahead = None if app.db.is_postgres else Ahead(app.db, ParseAhead(limits=limits))
    try:
        work(
            app.processor,
            wake,
            stop,
            lambda outcome, seconds: results.put(
                (outcome.state.value, seconds, outcome.auto_reply_suppressed)
            ),
            settings.daemon.poll_interval,
            alive=lambda: parent is None or parent.is_alive(),
            rules=(generation, app.rules),
            ahead=ahead,
        )
    finally:
        if ahead is not None:
            ahead.parser.close()
        app.close()
