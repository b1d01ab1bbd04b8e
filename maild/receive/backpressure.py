"""Backpressure: stop taking mail in while the spool is too deep, resume when it drains.

The receivers ask `accepting()` for every mail; it reads two numbers from memory. The
spool depth itself (a COUNT over the pending rows) is read by `refresh()`, which the
daemon runs every `daemon.backpressure_interval` seconds off the event loop. Between two
refreshes the mails this process spooled are added to the last depth read, so one
instance's own flood cannot overshoot the high mark; other instances' spooling is seen
at the next refresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from maild.config import DaemonSettings
from maild.errors import TemporaryFailure
from maild.logs import event

__all__ = ["Backpressure"]

log = logging.getLogger("maild.backpressure")


class Backpressure:
    """Hysteresis between two marks: not accepting from `high` pending mails on, accepting
    again below `low`. A `high` of 0 means always accepting."""

    def __init__(
        self,
        *,
        high: int,
        low: int,
        depth: Callable[[], int],
        on_change: Callable[[bool], None] = lambda active: None,
    ) -> None:
        self.high = high
        self.low = low
        self._depth = depth
        self._on_change = on_change
        self._lock = threading.Lock()
        self._read = 0  # the depth at the last refresh
        self._since = 0  # mails spooled here since then
        self._active = False

    @classmethod
    def of(
        cls,
        daemon: DaemonSettings,
        depth: Callable[[], int],
        on_change: Callable[[bool], None] = lambda active: None,
    ) -> Backpressure:
        low = daemon.spool_low_mark
        high = daemon.spool_high_mark
        return cls(
            high=high, low=high // 2 if low is None else low, depth=depth, on_change=on_change
        )

    def accepting(self) -> bool:
        """False while the spool is past the high mark (and not yet below the low one)."""
        return not self._active

    def spooled(self, count: int = 1) -> None:
        """Count mails this process just spooled, until the next refresh reads them."""
        if not self.high:
            return
        with self._lock:
            self._since += count
            self._update(self._read + self._since)

    def refresh(self) -> None:
        """Read the spool depth (blocking: not on the event loop). A database outage keeps
        the last state: the receivers' own spool writes fail then anyway."""
        if not self.high:
            return
        try:
            depth = self._depth()
        except TemporaryFailure:
            return
        with self._lock:
            self._read, self._since = depth, 0
            self._update(depth)

    def status(self) -> dict[str, Any]:
        """For /healthz. `depth` counts pending mails up to the high mark only."""
        return {
            "accepting": not self._active,
            "depth": self._read + self._since,
            "high_mark": self.high,
            "low_mark": self.low,
        }

    def _update(self, depth: int) -> None:
        if self._active and depth < self.low:
            self._active = False
        elif not self._active and depth >= self.high:
            self._active = True
        else:
            return
        event(
            log,
            "backpressure on" if self._active else "backpressure off",
            logging.WARNING if self._active else logging.INFO,
            spool_depth=depth,
            high_mark=self.high,
            low_mark=self.low,
        )
        self._on_change(self._active)
