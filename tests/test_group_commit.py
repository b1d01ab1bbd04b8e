"""Group commit: mails that arrive while a commit is on the disk share the next one."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import func, select

from maild import spool
from maild.app import App
from maild.db.models import SpoolEntry
from maild.errors import TemporaryFailure
from maild.receive.group_commit import GroupCommit
from maild.types import Envelope
from tests.conftest import make_mail


def spooled(app: App) -> int:
    with app.db.transaction() as session:
        return session.scalar(select(func.count()).select_from(SpoolEntry)) or 0


class HeldWriter:
    """spool.put_many on the real database, held at the first call until released."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, mails: list[tuple[bytes, Envelope]]) -> list[int]:
        self.batches.append(len(mails))
        self.entered.set()
        self.release.wait(timeout=30)
        return spool.put_many(self.app.db, mails, "smtp", self.app.clock.now())


def test_mails_arriving_during_a_commit_share_the_next_one(app: App) -> None:
    writer = HeldWriter(app)
    group = GroupCommit(writer)
    mails = [make_mail(message_id=f"<m{n}@customer.example>") for n in range(6)]

    async def scenario() -> list[int]:
        first = asyncio.create_task(group.put(mails[0], Envelope()))
        await asyncio.to_thread(writer.entered.wait, 30)
        rest = [asyncio.create_task(group.put(raw, Envelope())) for raw in mails[1:]]
        # One turn of the loop runs the five tasks up to their wait: all are queued.
        await asyncio.sleep(0)
        writer.release.set()
        return await asyncio.gather(first, *rest)

    ids = asyncio.run(scenario())

    assert writer.batches == [1, 5]
    assert len(set(ids)) == 6
    assert spooled(app) == 6


def test_a_failed_commit_fails_every_mail_in_it_and_the_next_batch_still_runs(
    app: App,
) -> None:
    calls: list[int] = []

    def flaky(mails: list[tuple[bytes, Envelope]]) -> list[int]:
        calls.append(len(mails))
        if len(calls) == 1:
            raise TemporaryFailure("database unavailable: disk full")
        return spool.put_many(app.db, mails, "smtp", app.clock.now())

    group = GroupCommit(flaky)

    async def scenario() -> tuple[list[object], int]:
        failed = await asyncio.gather(
            group.put(make_mail(message_id="<a@x>"), Envelope()),
            group.put(make_mail(message_id="<b@x>"), Envelope()),
            return_exceptions=True,
        )
        later = await group.put(make_mail(message_id="<c@x>"), Envelope())
        return failed, later

    failed, later = asyncio.run(scenario())

    assert calls == [2, 1]
    assert all(isinstance(result, TemporaryFailure) for result in failed)
    assert later > 0
    assert spooled(app) == 1


def test_batches_are_bounded_by_count(app: App) -> None:
    writer = HeldWriter(app)
    group = GroupCommit(writer, max_mails=3)

    async def scenario() -> None:
        first = asyncio.create_task(group.put(make_mail(message_id="<0@x>"), Envelope()))
        await asyncio.to_thread(writer.entered.wait, 30)
        rest = [
            asyncio.create_task(group.put(make_mail(message_id=f"<{n}@x>"), Envelope()))
            for n in range(1, 8)
        ]
        await asyncio.sleep(0)
        writer.release.set()
        await asyncio.gather(first, *rest)

    asyncio.run(scenario())

    assert writer.batches == [1, 3, 3, 1]
    assert spooled(app) == 8


def test_a_mail_over_the_byte_bound_goes_alone(app: App) -> None:
    writer = HeldWriter(app)
    group = GroupCommit(writer, max_bytes=1)

    async def scenario() -> None:
        first = asyncio.create_task(group.put(make_mail(message_id="<0@x>"), Envelope()))
        await asyncio.to_thread(writer.entered.wait, 30)
        rest = [
            asyncio.create_task(group.put(make_mail(message_id=f"<{n}@x>"), Envelope()))
            for n in (1, 2)
        ]
        await asyncio.sleep(0)
        writer.release.set()
        await asyncio.gather(first, *rest)

    asyncio.run(scenario())

    assert writer.batches == [1, 1, 1]
    assert spooled(app) == 3
