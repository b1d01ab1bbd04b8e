"""Outbox gauges for /metrics, read from the database at scrape time (so every instance
reports the shared outbox, and a relay outage shows as a growing backlog)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from maild.clock import Clock
from maild.db.session import Database
from maild.errors import TemporaryFailure
from maild.outbox.tables import OUTBOX


class OutboxCollector(Collector):
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self._db.read() as session:
                pending, oldest = session.execute(
                    select(func.count(), func.min(OUTBOX.c.created_at)).where(
                        OUTBOX.c.state == "pending"
                    )
                ).one()
        except TemporaryFailure:
            return  # maild_database_up says so
        count = GaugeMetricFamily("maild_outbox_pending", "Outbound mails not yet sent")
        count.add_metric([], float(pending))
        yield count
        age = GaugeMetricFamily(
            "maild_outbox_oldest_pending_seconds", "Age of the oldest outbound mail not yet sent"
        )
        lag = (self._clock.now() - oldest).total_seconds() if oldest is not None else 0.0
        age.add_metric([], max(lag, 0.0))
        yield age
