"""Parse ahead in worker processes while the caller does the database work, in order.

Parsing is CPU-bound and the rest of a mail's processing is mostly database work, so a
bulk `maild ingest` overlaps them: the next batches are parsed on the other cores while
this batch is filed. Work goes out in batches because each hand-off to a process costs a
wake-up and a GIL round trip; results come back in submission order, so a reply is never
filed before the mail it answers. At most `window` batches are in flight, which bounds
memory.

Each parse is bounded by `[mail] max_parse_seconds` inside its process (deadline.py).
A parse stuck where that cannot reach it (inside one C call) is caught here: past the
backstop the processes are killed and the batch is parsed again one mail at a time, so
only the stuck mail is quarantined as a timeout.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Generic, TypeVar

from maild.lifetime import die_with_parent
from maild.pipeline.deadline import timeout_quarantine
from maild.pipeline.limits import DEFAULT_LIMITS, MailLimits
from maild.pipeline.parse import Parsed, parse_or_error

Key = TypeVar("Key")

# On top of the in-process deadline, before a process is taken for stuck: time to
# notice the deadline, and to wait for a process busy with the batch before.
_BACKSTOP_GRACE = 5.0


def _parse_batch(raws: list[bytes], limits: MailLimits) -> list[Parsed]:
    return [parse_or_error(raw, limits) for raw in raws]


class ParseAhead(Generic[Key]):
    def __init__(
        self,
        workers: int | None = None,
        window: int = 4,
        limits: MailLimits = DEFAULT_LIMITS,
        backstop: float | None = None,
    ) -> None:
        """`backstop`: seconds a mail may take before its process is killed; by default
        twice the parse deadline plus a grace, none when the deadline is off."""
        self._limits = limits
        # One core stays with the caller, whose database work is the other half of the job.
        self._workers = workers or max((os.cpu_count() or 2) - 1, 1)
        self._window = window
        if backstop is None and limits.max_parse_seconds > 0:
            backstop = 2 * limits.max_parse_seconds + _BACKSTOP_GRACE
        self._backstop = backstop
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[list[Key], list[bytes], Future[list[Parsed]]]] = deque()

    def submit(self, keys: list[Key], raws: list[bytes]) -> Iterator[tuple[Key, Parsed]]:
        """Queue a batch; yields the results that had to be taken to stay in the window."""
        if not keys:
            return
        self._pending.append((keys, raws, self._start(raws)))
        while len(self._pending) > self._window:
            yield from self._take()

    def finish(self) -> Iterator[tuple[Key, Parsed]]:
        """Everything still in flight, in order."""
        while self._pending:
            yield from self._take()

    def _start(self, raws: list[bytes]) -> Future[list[Parsed]]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers, initializer=die_with_parent, initargs=(os.getpid(),)
            )
        return self._pool.submit(_parse_batch, raws, self._limits)

    def _take(self) -> Iterator[tuple[Key, Parsed]]:
        keys, raws, future = self._pending.popleft()
        # The oldest batch is the first one a process took up, so waiting for it from
        # now on gives it at least its whole allowance.
        allowance = None if self._backstop is None else self._backstop * len(raws)
        try:
            results = future.result(timeout=allowance)
        except TimeoutError:
            results = self._one_at_a_time(raws)
        yield from zip(keys, results, strict=True)

    def _one_at_a_time(self, raws: list[bytes]) -> list[Parsed]:
        assert self._backstop is not None
        self._kill()
        results: list[Parsed] = []
        for raw in raws:
            try:
                results += self._start([raw]).result(timeout=self._backstop)
            except TimeoutError:
                self._kill()
                results.append(timeout_quarantine(self._backstop, self._limits.max_parse_seconds))
        # What was in flight died with the processes: start it again, in order.
        self._pending = deque((keys, raws, self._start(raws)) for keys, raws, _ in self._pending)
        return results

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # A stuck process would never take a shutdown request; only a kill ends it.
        for process in list(pool._processes.values()):
            process.kill()
        pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
