"""Parse ahead in worker processes while the caller does the database work, in order.

Parsing is CPU-bound and the rest of a mail's processing is mostly waiting on commits, so a
bulk `maild ingest` overlaps them: mail N+1.. are parsed on the other cores while mail N is
filed. Results come back in submission order, so a reply is never filed before the mail it
answers. At most `window` mails are in flight, which bounds memory.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Generic, TypeVar

from maild.pipeline.process import Parsed, parse_or_error

Key = TypeVar("Key")


class ParseAhead(Generic[Key]):
    def __init__(self, workers: int | None = None) -> None:
        self._workers = workers or max(os.cpu_count() or 1, 1)
        self._window = self._workers * 4
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[tuple[Key, Future[Parsed]]] = deque()

    def submit(self, key: Key, raw: bytes) -> Iterator[tuple[Key, Parsed]]:
        """Queue one mail; yields the results that had to be taken to stay in the window."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self._workers)
        self._pending.append((key, self._pool.submit(parse_or_error, raw)))
        while len(self._pending) > self._window:
            yield self._take()

    def finish(self) -> Iterator[tuple[Key, Parsed]]:
        """Everything still in flight, in order."""
        while self._pending:
            yield self._take()

    def _take(self) -> tuple[Key, Parsed]:
        key, future = self._pending.popleft()
        return key, future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
