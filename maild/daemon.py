"""`maild run`: listeners, processing workers, scheduler, health — and a clean stop."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchfiles import awatch

from maild import spool
from maild.app import App
from maild.db.checkpoint import Checkpointer
from maild.health import HealthServer, Metrics, spool_status
from maild.logs import event
from maild.outbox.send import Sender, SenderThread
from maild.pipeline.limits import MailLimits
from maild.pipeline.parse_ahead import ParseAhead
from maild.pipeline.process import Outcome
from maild.receive.backpressure import Backpressure
from maild.receive.group_commit import GroupCommit
from maild.receive.imap import start_pollers
from maild.receive.smtp import Listener, serve
from maild.receive.throttle import Throttle
from maild.roles import ROLES, Roles
from maild.scheduler import Scheduler
from maild.sla.service import SweepThread, build_sweeper
from maild.types import Envelope
from maild.worker import Ahead, Counter, Flag, Generation, process_main, work

log = logging.getLogger("maild.daemon")


@dataclass
class _Workers:
    """Processing workers as processes (daemon.workers > 0) or one thread (0)."""

    app: App
    metrics: Metrics
    count: int
    wake: Flag = field(init=False)
    stop: Flag = field(init=False)
    _processes: list[Any] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _ahead: Ahead | None = None

    def __post_init__(self) -> None:
        if self.count == 0:
            self.wake, self.stop = threading.Event(), threading.Event()
            self.rules_generation: Generation = Counter()
            return
        context = multiprocessing.get_context("spawn")
        self.wake, self.stop = context.Event(), context.Event()
        self.rules_generation = context.Value("i", 0)
        self._results = context.Queue()
        self._processes = [
            context.Process(
                target=process_main,
                args=(
                    self.app.settings,
                    self.wake,
                    self.stop,
                    self._results,
                    self.rules_generation,
                ),
                name=f"maild-worker-{i}",
            )
            for i in range(self.count)
        ]

    def reload_rules(self) -> None:
        """Have every worker re-read the rules before its next mail."""
        self.rules_generation.value += 1
        self.wake.set()

    def start(self) -> None:
        if not self._processes:
            # A thread cannot be interrupted, so its parsing (with the time bound) is
            # done in parse-ahead processes, on either database.
            self._ahead = Ahead(
                self.app.db, ParseAhead(limits=MailLimits.of(self.app.settings.mail))
            )
            thread = threading.Thread(
                target=work,
                args=(
                    self.app.processor,
                    self.wake,
                    self.stop,
                    self._record,
                    self.app.settings.daemon.poll_interval,
                ),
                kwargs={"rules": (self.rules_generation, self.app.rules), "ahead": self._ahead},
                name="maild-worker",
            )
            thread.start()
            self._threads.append(thread)
            return
        for process in self._processes:
            process.start()
        collector = threading.Thread(target=self._collect, name="maild-results", daemon=True)
        collector.start()

    def _record(self, outcome: Outcome, seconds: float) -> None:
        self._count(outcome.state.value, seconds, outcome.auto_reply_suppressed)

    def _collect(self) -> None:
        while True:
            item = self._results.get()
            if item is None:
                return
            self._count(*item)

    def _count(self, state: str, seconds: float, suppressed: str | None) -> None:
        self.metrics.processed.labels(state).inc()
        self.metrics.processing_seconds.observe(seconds)
        if suppressed is not None:
            self.metrics.auto_replies_suppressed.labels(suppressed).inc()

    def join(self) -> None:
        """Let each worker finish the mail it is on, then stop."""
        self.stop.set()
        self.wake.set()
        for thread in self._threads:
            thread.join()
        if self._ahead is not None:
            self._ahead.parser.close()
        for process in self._processes:
            process.join()
        if self._processes:
            self._results.put(None)


async def run(app: App, roles: Roles = ROLES["all"], workers_count: int | None = None) -> int:
    """Run the parts `roles` names until SIGTERM/SIGINT; the health server runs in every
    role. `workers_count` overrides `[daemon] workers`."""
    settings = app.settings
    loop = asyncio.get_running_loop()
    metrics = Metrics(app.db, app.clock)
    count = settings.daemon.workers if workers_count is None else workers_count
    workers = _Workers(app, metrics, count) if roles.process else None
    # Mail spooled here is for another instance's workers, found by their poll.
    wake_workers = workers.wake.set if workers is not None else lambda: None

    def write_many(mails: list[tuple[bytes, Envelope]]) -> list[int]:
        return spool.put_many(app.db, mails, "smtp", app.clock.now())

    group_commit = GroupCommit(write_many)
    # Embedded SQLite: the log is copied into the database file beside the writers, not
    # inside whichever SMTP session's commit crosses the threshold (db/checkpoint.py).
    checkpointer = Checkpointer(app.db.engine)
    checkpointer.start()

    # hardening (issue 9): past the spool's high mark the receivers refuse or pause.
    def pending() -> int:
        with app.db.read() as session:
            return spool.count_pending(session, settings.daemon.spool_high_mark)

    backpressure = Backpressure.of(settings.daemon, pending, metrics.backpressure.set)
    await asyncio.to_thread(backpressure.refresh)

    async def put(raw: bytes, envelope: Envelope) -> int:
        spool_id = await group_commit.put(raw, envelope)
        backpressure.spooled()
        wake_workers()
        return spool_id

    listener = Listener(
        settings,
        put,
        lambda result: metrics.received.labels("smtp", result).inc(),
        throttle=Throttle.of(settings.smtp, app.clock),
        accepting=backpressure.accepting,
    )
    servers = [await serve(listener, one) for one in settings.listener] if roles.receive else []
    if workers is not None:
        workers.start()
    pollers = (
        start_pollers(
            settings,
            app.db,
            app.clock,
            wake_workers,
            metrics,
            accepting=backpressure.accepting,
        )
        if settings.imap and roles.receive
        else None
    )

    # outbox (issue 6): the sender thread sends due rows whenever the scheduler wakes it.
    outbox = SenderThread(
        Sender(
            app.db,
            settings.outbound,
            app.clock,
            on_result=lambda result: metrics.outbound.labels(result).inc(),
        )
    )
    if roles.send:
        outbox.start()

    # sla (issue 8): the sweep runs on its own thread whenever the scheduler wakes it.
    sla = SweepThread(build_sweeper(app), app.clock)
    if roles.process:
        sla.start()

    scheduler = Scheduler()
    if workers is not None:
        scheduler.every("spool-poll", settings.daemon.poll_interval, workers.wake.set)
    if roles.process:
        scheduler.every("sla-sweep", settings.sla.interval, sla.wake.set)
    if roles.send:
        scheduler.every("outbox-send", settings.outbound.interval, outbox.wake.set)
    if settings.daemon.spool_high_mark and roles.receive:
        scheduler.every("backpressure", settings.daemon.backpressure_interval, backpressure.refresh)
    scheduler.start()

    health: HealthServer | None = None
    if settings.http.enabled:

        def status() -> dict[str, Any]:
            imap = {"imap": pollers.status()} if pollers is not None else {}
            pressure = {"backpressure": backpressure.status()}
            return {**spool_status(app.db, app.clock), **pressure, **imap}

        health = HealthServer(settings.http.host, settings.http.port, metrics, status)
        health.start()

    def reload_rules(why: str) -> None:
        # The daemon validates first: workers only re-read rules that load cleanly, and
        # a broken edit keeps the last good rules everywhere.
        event(log, "rules reload requested", why=why)
        if not app.rules.reload().ok:
            metrics.rules_reload_failures.inc()
        elif workers is not None:
            workers.reload_rules()

    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload_rules, "SIGHUP")
    watcher = asyncio.create_task(_watch_rules(settings.paths.rules, reload_rules, stopping))

    event(
        log,
        "ready",
        listeners=" ".join(_describe(s) for s in servers),
        http=f"{settings.http.host}:{health.port}" if health else "off",
        role=str(roles),
        workers=count if workers is not None else 0,
    )
    await stopping.wait()

    event(log, "stopping")
    await watcher
    for server in servers:
        server.close()
    await listener.drain(settings.smtp.shutdown_grace)
    scheduler.stop()
    if pollers is not None:
        await asyncio.to_thread(pollers.stop)
    if workers is not None:
        await asyncio.to_thread(workers.join)
    if roles.send:
        await asyncio.to_thread(outbox.stop)
    if roles.process:
        await asyncio.to_thread(sla.stop)
    if health is not None:
        health.stop()
    checkpointer.stop()
    event(log, "stopped")
    return 0


async def _watch_rules(
    directory: Path, reload: Callable[[str], None], stopping: asyncio.Event
) -> None:
    """Reload when a file in the rules directory changes (editors save in bursts: one
    reload per burst)."""
    if not directory.is_dir():
        return
    async for changes in awatch(directory, stop_event=stopping, debounce=300, recursive=False):
        names = sorted({Path(path).name for _, path in changes})
        reload("changed: " + ", ".join(names))


def _describe(server: asyncio.AbstractServer) -> str:
    names = []
    for sock in getattr(server, "sockets", ()):
        name = sock.getsockname()
        names.append(f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name))
    return ",".join(names)
