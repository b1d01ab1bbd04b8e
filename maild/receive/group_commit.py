"""Group commit for the SMTP listener: concurrent spool writes share one durable commit.

Every `250` waits for a durable commit, and on SQLite a durable commit is an fsync that
costs far more than writing the mail. Sessions that finish DATA while a commit is on the
disk queue up and go into the next commit together, so a burst from many clients pays
one fsync per batch instead of one per mail. A lone mail is written at once: nothing
waits for a batch to fill.

A failed commit fails every mail in it (the sessions answer 451 and the clients retry);
nothing in a failed batch is acknowledged, so nothing is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from maild.types import Envelope

WriteMany = Callable[[list[tuple[bytes, Envelope]]], list[int]]


class GroupCommit:
    def __init__(self, write_many: WriteMany, max_mails: int = 64, max_bytes: int = 32 << 20):
        self._write_many = write_many
        self._max_mails = max_mails
        self._max_bytes = max_bytes
        self._waiting: list[tuple[bytes, Envelope, asyncio.Future[int]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def put(self, raw: bytes, envelope: Envelope) -> int:
        """Spool one mail; returns its id once it is committed. Raises what the write raised."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # Marks a failure as seen even when the session stopped waiting (client gone).
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._waiting.append((raw, envelope, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        # shield: a client that hangs up must not cancel the commit other mails share.
        return await asyncio.shield(future)

    async def _write_all(self) -> None:
        while self._waiting:
            batch = self._take_batch()
            try:
                ids = await asyncio.to_thread(
                    self._write_many, [(raw, envelope) for raw, envelope, _ in batch]
                )
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), spool_id in zip(batch, ids, strict=True):
                if not future.done():
                    future.set_result(spool_id)

    def _take_batch(self) -> list[tuple[bytes, Envelope, asyncio.Future[int]]]:
        size = 0
        count = 0
        for raw, _, _ in self._waiting:
            if count and (count >= self._max_mails or size + len(raw) > self._max_bytes):
                break
            size += len(raw)
            count += 1
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        return batch
