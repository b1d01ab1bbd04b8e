"""Health and Prometheus metrics over a loopback HTTP port."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from maild import spool
from maild.clock import Clock
from maild.db.session import Database
from maild.errors import TemporaryFailure
from maild.outbox.metrics import OutboxCollector


class Metrics:
    """Counters the daemon updates; spool gauges are read from the database at scrape time."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            "maild_mails_received",
            "Mails offered to a receiver, by source and result",
            ["source", "result"],
            registry=self.registry,
        )
        self.processed = Counter(
            "maild_mails_processed",
            "Mails taken from the spool, by result (done, quarantined, ignored)",
            ["result"],
            registry=self.registry,
        )
        self.processing_seconds = Histogram(
            "maild_processing_seconds",
            "Time to process one spooled mail",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.rules_reload_failures = Counter(
            "maild_rules_reload_failures",
            "Rule reloads rejected (the last good rules stayed in force)",
            registry=self.registry,
        )
        # outbox (issue 6)
        self.auto_replies_suppressed = Counter(
            "maild_auto_replies_suppressed",
            "Automatic replies not sent, by the loop/abuse rule that stopped them",
            ["rule"],
            registry=self.registry,
        )
        self.outbound = Counter(
            "maild_outbound_attempts",
            "Outbound delivery attempts, by result (sent, retry, failed)",
            ["result"],
            registry=self.registry,
        )
        # hardening (issue 9)
        self.backpressure = Gauge(
            "maild_backpressure",
            "1 while the spool is past its high mark and receivers refuse or pause",
            registry=self.registry,
        )
        self.registry.register(_SpoolCollector(db, clock))
        self.registry.register(OutboxCollector(db, clock))


class _SpoolCollector(Collector):
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = spool_status(self._db, self._clock)
        up = GaugeMetricFamily("maild_database_up", "1 if the database answered")
        up.add_metric([], 1.0 if status["database"] == "ok" else 0.0)
        yield up
        if status["database"] != "ok":
            return
        depth = GaugeMetricFamily("maild_spool_depth", "Mails waiting to be processed")
        depth.add_metric([], float(status["spool_depth"]))
        yield depth
        age = GaugeMetricFamily("maild_spool_oldest_pending_seconds", "Age of the oldest")
        age.add_metric([], float(status["oldest_pending_seconds"]))
        yield age
        quarantined = GaugeMetricFamily("maild_quarantined", "Mails in quarantine now")
        quarantined.add_metric([], float(status["quarantined"]))
        yield quarantined


def spool_status(db: Database, clock: Clock) -> dict[str, Any]:
    try:
        with db.read() as session:
            pending, oldest = spool.depth(session)
            quarantined = spool.count_quarantined(session)
    except TemporaryFailure as exc:
        return {"database": "unavailable", "error": str(exc)}
    lag = (clock.now() - oldest).total_seconds() if oldest else 0.0
    return {
        "database": "ok",
        "spool_depth": pending,
        "oldest_pending_seconds": round(max(lag, 0.0), 3),
        "quarantined": quarantined,
    }


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the event log."""


class HealthServer:
    """`/healthz` (200 when the database answers, else 503) and `/metrics`."""

    def __init__(
        self, host: str, port: int, metrics: Metrics, status: Callable[[], dict[str, Any]]
    ) -> None:
        self._metrics_app = make_wsgi_app(metrics.registry)
        self._status = status
        self._server: WSGIServer = make_server(host, port, self._app, handler_class=_QuietHandler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="maild-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = self._metrics_app(environ, start_response)
            return result
        if path == "/healthz":
            status = self._status()
            code = "200 OK" if status.get("database") == "ok" else "503 Service Unavailable"
            body = json.dumps(status).encode()
            start_response(code, [("Content-Type", "application/json")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
