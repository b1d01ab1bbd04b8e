"""APScheduler with an in-memory job store: jobs only trigger work; state lives in the database."""

from __future__ import annotations

from collections.abc import Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler


class Scheduler:
    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(timezone="UTC")

    def every(self, job_id: str, seconds: float, trigger: Callable[[], None]) -> None:
        """Run `trigger` every `seconds`; a fixed id keeps one job per purpose."""
        self._scheduler.add_job(
            trigger,
            "interval",
            seconds=seconds,
            id=job_id,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
        )

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        self._scheduler.shutdown(wait=False)
