"""SLA sweep benchmark on PostgreSQL: one sweep at 10k and at 1M tickets, 1,000 of them due.

    python bench/sla.py [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                        [--due 1000] [--sizes 10000,1000000] [--repeat 3] [--batch-size 500]

Makes a throwaway database (dropped at the end), migrates it, and bulk-loads tickets with
COPY: `--due` of them under the repo's `rules/sla.yaml` policy `standard`, with their
first-response reminder due now; the rest are either under the policy with their next
check in the future, or without a policy (no check). Then, for each size, it times one
`Sweeper.sweep(now)` (the daemon's job: select by `next_sla_check_at`, plan, write the
ledger, compose and queue 1,000 reminder mails, update the tickets, in batches of
`[sla] batch_size`), `--repeat` times, resetting the due tickets between runs. The
tickets of a smaller size are kept when growing to the next one, so every size sweeps
the same due set.

Also times the due-time computation per ticket (a new ticket's clocks: first response
and resolution due in the Budapest business calendar, then the next check).

Targets: sweep(1M) <= 0.5 s, sweep(1M)/sweep(10k) <= 1.5. A table goes to stdout, the
figures to bench/out/sla.json. Exit status 0 when the targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maild.app import App  # noqa: E402
from maild.clock import FixedClock  # noqa: E402
from maild.config import parse_settings  # noqa: E402
from maild.db import migrate  # noqa: E402
from maild.sla import clocks as sla_clocks  # noqa: E402
from maild.sla.clocks import Clocks  # noqa: E402
from maild.sla.service import build_sweeper  # noqa: E402

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # Monday 13:00 in Budapest
COLUMNS = (
    "id, number, subject, status, priority, queue, team, tier, assignee, tags, requester_id,"
    " created_at, updated_at, sla_applied, sla_priority, first_response_due_at,"
    " resolution_due_at, next_sla_check_at, sla_response_cycle, sla_resolution_cycle"
)


def copy_tickets(raw: object, first: int, count: int, due: int, rng: random.Random) -> None:
    """COPY `count` tickets with ids from `first`; the first `due` of them due now."""
    buffer = io.StringIO()
    for i in range(first, first + count):
        opened = NOW - timedelta(minutes=rng.randint(200, 100_000))
        if i < first + due:
            # Opened at 10:00 local: the reminder at 75 % of 4 h is due at 13:00 local.
            policy, fr_due, check = "standard", "2026-03-02 13:00:00+00", "2026-03-02 12:00:00+00"
        elif i % 2:
            future = NOW + timedelta(minutes=rng.randint(1, 500_000))
            policy, fr_due, check = "standard", future.isoformat(), future.isoformat()
        else:
            policy, fr_due, check = "\\N", "\\N", "\\N"
        buffer.write(
            "\t".join(
                [
                    str(i),
                    str(i),
                    f"Case {i}",
                    "open",
                    "normal",
                    "support",
                    "first-line",
                    "1",
                    "anna@example.com",
                    "[]",
                    "1",
                    opened.isoformat(),
                    opened.isoformat(),
                    policy,
                    "normal" if policy != "\\N" else "\\N",
                    fr_due,
                    "\\N",
                    check,
                    "0",
                    "0",
                ]
            )
            + "\n"
        )
    buffer.seek(0)
    with raw.cursor() as cursor, cursor.copy(f"COPY ticket ({COLUMNS}) FROM STDIN") as copy:  # type: ignore[attr-defined]
        while chunk := buffer.read(1 << 20):
            copy.write(chunk)
    raw.commit()  # type: ignore[attr-defined]


def reset(engine: object, due: int) -> None:
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("DELETE FROM sla_stage"))
        conn.execute(text("DELETE FROM outbox"))
        conn.execute(text("DELETE FROM event"))
        conn.execute(
            text("UPDATE ticket SET next_sla_check_at = '2026-03-02 12:00:00+00' WHERE id <= :due"),
            {"due": due},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:  # type: ignore[attr-defined]
        conn.execute(text("VACUUM ANALYZE ticket"))
        conn.execute(text("VACUUM ANALYZE sla_stage"))


def time_sweeps(
    app: App, engine: object, due: int, repeat: int, cpu_seconds: list[float]
) -> list[float]:
    """Wall-clock seconds of each sweep; this process' CPU seconds go to `cpu_seconds`."""
    sweeper = build_sweeper(app)
    seconds = []
    for _ in range(repeat):
        reset(engine, due)
        started, cpu = time.perf_counter(), time.process_time()
        result = sweeper.sweep(NOW)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu)
        if len(result.fired) != due or result.mails != due:
            got = f"{len(result.fired)} stages, {result.mails} mails"
            raise SystemExit(f"expected {due} stages and mails, got {got}")
    return seconds


def due_time_cost(app: App, count: int = 20_000) -> float:
    """Seconds per ticket to start a new ticket's clocks and find its next check."""
    policy = app.sla.current.policies["standard"]
    rng = random.Random(2)
    starts = [NOW + timedelta(minutes=rng.randint(0, 60 * 24 * 365)) for _ in range(count)]
    started = time.perf_counter()
    for start in starts:
        clocks, _ = sla_clocks.update(
            Clocks(), policy, None, status="new", priority="normal", now=start
        )
        sla_clocks.next_check(clocks, policy, set())
    return (time.perf_counter() - started) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500, help="[sla] batch_size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    name = f"maild_bench_sla_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.pg.rsplit("/", 1)[0] + f"/{name}"
    rows = []
    try:
        engine = create_engine(url)
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO contact (id, address, name, created_at)"
                    " VALUES (1, 'ada@customer.example', 'Ada', now())"
                )
            )
        settings = parse_settings(
            {
                "database": {"url": url},
                "paths": {"rules": str(REPO / "rules"), "templates": str(REPO / "templates")},
                "outbound": {"enabled": True},
                "sla": {"batch_size": args.batch_size},
            },
            "<bench>",
        )
        app = App(settings, clock=FixedClock(NOW))
        rng = random.Random(1)
        loaded = 0
        per_ticket = due_time_cost(app)
        for size in sizes:
            started = time.perf_counter()
            raw = engine.raw_connection()
            copy_tickets(raw, loaded + 1, size - loaded, args.due if loaded == 0 else 0, rng)
            raw.close()
            load = time.perf_counter() - started
            loaded = size
            cpu: list[float] = []
            seconds = time_sweeps(app, engine, args.due, args.repeat, cpu)
            rows.append(
                {
                    "tickets": size,
                    "due": args.due,
                    "load_seconds": round(load, 1),
                    "sweep_seconds": [round(s, 4) for s in seconds],
                    "sweep_median": round(statistics.median(seconds), 4),
                    "sweep_client_cpu_seconds": [round(c, 4) for c in cpu],
                }
            )
            print(
                f"{size:>9} tickets, {args.due} due: sweep "
                + ", ".join(f"{s:.3f}" for s in seconds)
                + f" s (median {statistics.median(seconds):.3f}; client CPU median"
                + f" {statistics.median(cpu):.3f} s); loaded in {load:.1f} s",
                flush=True,
            )
        app.close()
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    small, large = rows[0]["sweep_median"], rows[-1]["sweep_median"]
    ratio = large / small
    print(f"ratio {rows[-1]['tickets']}/{rows[0]['tickets']}: {ratio:.2f} (target <= 1.5)")
    print(f"due-time computation: {per_ticket * 1e6:.1f} µs per ticket")
    ok = large <= 0.5 and ratio <= 1.5
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "sla.json").write_text(
        json.dumps(
            {"sizes": rows, "ratio": ratio, "due_time_seconds_per_ticket": per_ticket, "ok": ok},
            indent=2,
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
