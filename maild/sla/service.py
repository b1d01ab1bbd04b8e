"""The sweep wired to an app: built from its settings, run on a thread by the daemon."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError, OperationalError

from maild.clock import Clock
from maild.errors import TemporaryFailure
from maild.logs import event
from maild.sla.notify import Notifier
from maild.sla.sweep import Sweeper

if TYPE_CHECKING:
    from maild.app import App

log = logging.getLogger("maild.sla")


def build_sweeper(app: App) -> Sweeper:
    return Sweeper(
        app.db,
        lambda: app.sla.current,
        lambda: app.rules.current.directory,
        Notifier(app.settings),
        app.numbering,
        app.settings.sla.batch_size,
    )


class SweepThread:
    """Sweeps whenever the scheduler wakes it (`[sla] interval`), one sweep at a time;
    a database outage only delays the stages (they fire on the next sweep)."""

    def __init__(self, sweeper: Sweeper, clock: Clock) -> None:
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._sweeper = sweeper
        self._clock = clock
        self._thread = threading.Thread(target=self._run, name="maild-sla", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the sweep under way, then stop."""
        self._stop.set()
        self.wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self._stop.is_set():
                return
            try:
                self._sweeper.sweep(self._clock.now())
            except (TemporaryFailure, OperationalError, IntegrityError) as exc:
                # The batch was rolled back whole; the next sweep reads it again.
                event(
                    log, "SLA sweep failed; retried next interval", logging.WARNING, error=str(exc)
                )
            except Exception:  # a bug, or an operator template that raises: keep sweeping
                log.exception("SLA sweep failed; retried next interval")
