"""Parse ahead in worker processes while the caller does the database work, in order.

Parsing is CPU-bound and the rest of a mail's processing is mostly database work, so a
bulk `maild ingest` overlaps them: the next batches are parsed on the other cores while
this batch is filed. Work goes out in batches because each hand-off to a process costs a
wake-up and a GIL round trip; results come back in submission order, so a reply is never
filed before the mail it answers. At most `window` batches are in flight, which bounds
memory.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Generic, TypeVar

from maild.pipeline.limits import DEFAULT_LIMITS, MailLimits
from maild.pipeline.process import Parsed, parse_or_error

Key = TypeVar("Key")


def _parse_batch(raws: list[bytes], limits: MailLimits) -> list[Parsed]:
    return [parse_or_error(raw, limits) for raw in raws]


class ParseAhead(Generic[Key]):
    def __init__(
        self, workers: int | None = None, window: int = 4, limits: MailLimits = DEFAULT_LIMITS
    ) -> None:
        self._limits = limits
        # One core stays with the caller, whose database work is the other half of the job.
        self._workers = workers or max((os.cpu_count() or 2) - 1, 1)
        self._window = window
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[list[Key], Future[list[Parsed]]]] = deque()

    def submit(self, keys: list[Key], raws: list[bytes]) -> Iterator[tuple[Key, Parsed]]:
        """Queue a batch; yields the results that had to be taken to stay in the window."""
        if not keys:
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self._workers)
        self._pending.append((keys, self._pool.submit(_parse_batch, raws, self._limits)))
        while len(self._pending) > self._window:
            yield from self._take()

    def finish(self) -> Iterator[tuple[Key, Parsed]]:
        """Everything still in flight, in order."""
        while self._pending:
            yield from self._take()

    def _take(self) -> Iterator[tuple[Key, Parsed]]:
        keys, future = self._pending.popleft()
        yield from zip(keys, future.result(), strict=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
