"""Scale-out benchmark: processing throughput with 1 and 2 workers on PostgreSQL.

    python bench/scale.py [--count 1500] [--seed 1] [--workers 1 2] [--pg URL] [--maild PATH]

1. generates the deterministic corpus (bench/corpus.py) into a temp dir;
2. creates a seed database, runs ``maild db upgrade`` on it, starts
   ``maild run --role receive`` and sends the whole corpus to it over SMTP (4 client
   connections), so the spool holds every mail as pending, exactly as a receiving edge
   leaves it; the receiver is stopped;
3. for each worker count N: a copy of the seed database (``CREATE DATABASE … TEMPLATE``,
   so every run starts from the same spool) and ``maild run --role process --workers N``
   until no mail is pending. Throughput is (mails − 1) / (last − first ``processed_at``)
   of the spool rows, i.e. steady processing without the start-up; the wall clock from
   the start of the process to an empty spool is shown too;
4. the database limit: commits/s of the spool-put transaction (one INSERT of a spool row
   carrying a median-size corpus mail, then COMMIT), from 1 and from 4 client connections
   for 3 s each, on a scratch copy.

A table goes to stdout, the figures to bench/out/scale.json. maild is never imported;
the script creates and drops its own databases (``maild_scale_<random>_*``).

Exit status: 0 target met (2 workers >= 1.6x one); 1 target missed or mails not all
filed; 2 the run could not be done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

TARGET_RATIO = 1.6
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out" / "scale.json"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SUPPORT = "support@example.com"


def find_maild(explicit: str | None) -> Path | None:
    if explicit:
        found = shutil.which(explicit)
        return Path(found).absolute() if found else None
    beside = Path(sys.executable).parent / "maild"  # same venv as this interpreter
    if beside.exists():
        return beside
    found = shutil.which("maild")
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Databases:
    """Throwaway databases on one server, dropped at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"maild_scale_{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []

    def create(self, suffix: str, template: str | None = None) -> str:
        name = f"{self.prefix}_{suffix}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        self.names.append(name)
        return name

    def url(self, name: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in reversed(self.names):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def write_config(directory: Path, db_url: str, smtp_port: int, level: str) -> Path:
    # A rules directory that does not exist: every default applies, no rules to load.
    path = directory / "config.toml"
    path.write_text(
        "\n".join(
            [
                "[database]",
                f'url = "{db_url.replace("postgresql://", "postgresql+psycopg://", 1)}"',
                "[logging]",
                'format = "json"',
                f'level = "{level}"',
                "[daemon]",
                "poll_interval = 0.5",
                "[smtp]",
                "max_mails_per_sender = 0",  # the bench is one sender flooding on purpose
                "[http]",
                "enabled = false",
                "[paths]",
                f'rules = "{directory / "no-rules"}"',
                "[mail]",
                f'support_addresses = ["{SUPPORT}"]',
                "[[listener]]",
                'protocol = "smtp"',
                f"port = {smtp_port}",
            ]
        )
        + "\n"
    )
    return path


class Daemon:
    """A `maild run` subprocess; its JSON log goes to a file, "ready" can be awaited."""

    def __init__(self, exe: Path, config: Path, args: list[str], log: Path) -> None:
        self.log = log
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [str(exe), "run", "--config", str(config), *args],
            cwd=config.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stderr is not None
        with self.log.open("wb") as out:
            for line in self.process.stderr:
                out.write(line)
                if b'"event": "ready"' in line or b'"event":"ready"' in line:
                    self._ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeError(f"maild never became ready; see {self.log}")

    def stop(self) -> tuple[int, float]:
        """SIGTERM, wait; the exit code and the CPU seconds of maild and its workers
        (wait4 counts the children it reaped, i.e. the worker processes)."""
        self.process.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        return self.process.returncode, usage.ru_utime + usage.ru_stime


def upgrade(exe: Path, config: Path) -> None:
    subprocess.run(
        [str(exe), "db", "upgrade", "--config", str(config)],
        check=True,
        capture_output=True,
        cwd=config.parent,
        timeout=120,
    )


def fill_spool(exe: Path, config: Path, port: int, paths: list[Path], work: Path) -> float:
    """Send every file to a `--role receive` instance; returns mails/s accepted."""
    receiver = Daemon(exe, config, ["--role", "receive"], work / "receive.log")
    try:
        receiver.wait_ready()
        started = time.perf_counter()

        def send(chunk: list[Path]) -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                for path in chunk:
                    # smtplib sends bytes as they are; SMTP wants CRLF line ends.
                    data = re.sub(rb"\r?\n", b"\r\n", path.read_bytes())
                    client.sendmail("customer@bench.example", [SUPPORT], data)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send, [paths[i::4] for i in range(4)]))
        rate = len(paths) / (time.perf_counter() - started)
    finally:
        if receiver.stop()[0] != 0:
            raise RuntimeError(f"the receiver did not stop cleanly; see {receiver.log}")
    return rate


def spool_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT state, count(*) FROM spool GROUP BY state").fetchall()
    return {state: int(n) for state, n in rows}


def process_run(
    exe: Path, config: Path, url: str, workers: int, timeout: float, log: Path
) -> dict[str, Any]:
    """`--role process --workers N` until no mail is pending; the figures of the run."""
    started = time.perf_counter()
    daemon = Daemon(exe, config, ["--role", "process", "--workers", str(workers)], log)
    try:
        while spool_counts(url).get("pending", 0):
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"{workers} worker(s): still pending after {timeout} s")
            if daemon.process.poll() is not None:
                raise RuntimeError(f"maild exited early; see {log}")
            time.sleep(0.25)
        wall = time.perf_counter() - started
    finally:
        code, cpu = daemon.stop()
    with psycopg.connect(url) as conn:
        first, last, filed = conn.execute(
            "SELECT min(processed_at), max(processed_at), count(*) FROM spool"
            " WHERE processed_at IS NOT NULL"
        ).fetchone()
        tickets = conn.execute("SELECT count(*) FROM ticket").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM message").fetchone()[0]
    window = (last - first).total_seconds()
    return {
        "workers": workers,
        "mails_filed": filed,
        "states": spool_counts(url),
        "tickets": tickets,
        "messages": messages,
        "window_s": round(window, 3),
        "msgs_per_s": round((filed - 1) / window, 1) if window > 0 else None,
        "wall_s": round(wall, 3),
        "wall_msgs_per_s": round(filed / wall, 1),
        "exit_code": code,
        # From the start to the stop; over the wall time, how many cores maild kept busy.
        "maild_cpu_s": round(cpu, 2),
        "maild_cores_busy": round(cpu / wall, 2),
    }


def commit_rate(url: str, raw: bytes, clients: int, seconds: float) -> dict[str, Any]:
    """Spool-put transactions (INSERT a spool row and its spool_raw row, COMMIT) per second
    from `clients` connections.

    The spool row is a copy of a spooled row and the bytes are sent from the client, so
    they have the shape maild writes; that is what the receivers commit per mail (or per
    group)."""
    with psycopg.connect(url) as conn:
        columns = [
            name
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'spool' AND column_name <> 'id'"
            )
        ]
        template_id = conn.execute("SELECT min(id) FROM spool").fetchone()[0]
    listed = ", ".join(f'"{c}"' for c in columns)
    put = f"INSERT INTO spool ({listed}) SELECT {listed} FROM spool WHERE id = %s RETURNING id"
    put_raw = "INSERT INTO spool_raw (spool_id, raw) VALUES (%s, %s)"
    deadline = time.perf_counter() + seconds
    counts = [0] * clients

    def loop(index: int) -> None:
        with psycopg.connect(url) as conn:
            while time.perf_counter() < deadline:
                (spool_id,) = conn.execute(put, (template_id,)).fetchone()
                conn.execute(put_raw, (spool_id, raw))
                conn.commit()
                counts[index] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "commits": sum(counts),
        "commits_per_s": round(sum(counts) / elapsed),
    }


def server_settings(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])
            for name in ("server_version", "synchronous_commit", "fsync", "wal_sync_method")
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="maild scale-out benchmark",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--count", type=int, default=1500, help="mails in the corpus (1500)")
    ap.add_argument("--seed", type=int, default=1, help="corpus seed (1)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (1 2)")
    ap.add_argument("--pg", default=DEFAULT_PG, help=f"admin URL (default {DEFAULT_PG})")
    ap.add_argument("--maild", help="maild executable (default: next to sys.executable, else PATH)")
    ap.add_argument("--timeout", type=float, default=900, help="per processing run, s (900)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results ({DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if args.count < 2 or min(args.workers) < 1:
        ap.error("--count must be >= 2 and --workers >= 1")
    exe = find_maild(args.maild)
    if exe is None:
        print("no maild executable found", file=sys.stderr)
        return 2

    dbs = Databases(args.pg)
    with tempfile.TemporaryDirectory(prefix="maild-scale-") as tmp:
        work = Path(tmp)
        try:
            results = run(args, exe, dbs, work)
        except (RuntimeError, subprocess.CalledProcessError, psycopg.Error) as exc:
            print(f"the benchmark could not be run: {exc}", file=sys.stderr)
            for log in sorted(work.glob("*.log")):
                print(f"--- {log.name} (tail)", file=sys.stderr)
                print(
                    "\n".join(log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr
                )
            return 2
        finally:
            dbs.drop_all()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    print(f"figures written to {args.out}")
    complete = all(r["states"].get("pending", 0) == 0 for r in results["runs"])
    ratio = results.get("ratio_2w_1w")
    return 0 if complete and (ratio is None or ratio >= TARGET_RATIO) else 1


def run(args: argparse.Namespace, exe: Path, dbs: Databases, work: Path) -> dict[str, Any]:
    print(f"generating {args.count} mails (seed {args.seed}) ...", flush=True)
    generated = corpus.generate(work / "corpus", args.count, args.seed)
    # RFC 5321 caps a line at 998 bytes and maild's listener refuses longer ones (an MTA
    # would have re-encoded such a mail); those few files are left out, and counted.
    paths = [p for p in generated if max(map(len, p.read_bytes().splitlines())) <= 998]
    sizes = sorted(p.stat().st_size for p in paths)

    seed = dbs.create("seed")
    port = free_port()
    (work / "seed").mkdir()
    config = write_config(work / "seed", dbs.url(seed), port, "INFO")
    upgrade(exe, config)
    print("spooling through maild run --role receive over SMTP ...", flush=True)
    accept_rate = fill_spool(exe, config, port, paths, work)
    spooled = spool_counts(dbs.url(seed))
    if spooled != {"pending": len(paths)}:
        raise RuntimeError(f"the seed spool is not {len(paths)} pending mails: {spooled}")

    runs = []
    for workers in args.workers:
        name = dbs.create(f"w{workers}", template=seed)
        (work / name).mkdir()
        config = write_config(work / name, dbs.url(name), free_port(), "WARNING")
        print(f"processing with {workers} worker(s) ...", flush=True)
        runs.append(
            process_run(
                exe, config, dbs.url(name), workers, args.timeout, work / f"process-{workers}.log"
            )
        )

    scratch = dbs.create("commits", template=seed)
    raw = paths[[p.stat().st_size for p in paths].index(sizes[len(sizes) // 2])].read_bytes()
    print("measuring spool-put commits/s ...", flush=True)
    commits = [commit_rate(dbs.url(scratch), raw, clients, 3.0) for clients in (1, 4)]

    by_workers = {r["workers"]: r for r in runs}
    ratio = None
    if 1 in by_workers and 2 in by_workers:
        ratio = round(by_workers[2]["msgs_per_s"] / by_workers[1]["msgs_per_s"], 2)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "postgresql": server_settings(dbs.url(seed)),
        "corpus": {
            "count": len(paths),
            "skipped_long_lines": len(generated) - len(paths),
            "seed": args.seed,
            "median_bytes": int(statistics.median(sizes)),
            "total_bytes": sum(sizes),
        },
        "receive_msgs_per_s": round(accept_rate, 1),
        "runs": runs,
        "ratio_2w_1w": ratio,
        "target_ratio": TARGET_RATIO,
        "spool_put_commits": commits,
    }


def report(results: dict[str, Any]) -> None:
    print()
    mails = results["corpus"]
    print(
        f"corpus: {mails['count']} mails, median {mails['median_bytes']} B;"
        f" {mails['skipped_long_lines']} left out (a line over 998 bytes, not sendable by SMTP)"
    )
    print(f"spooled by --role receive over SMTP: {results['receive_msgs_per_s']} mails/s")
    print(
        f"{'workers':>7} {'msgs/s':>8} {'window s':>9} {'wall s':>8} {'maild cores':>11}"
        f" {'filed':>6}  states"
    )
    for r in results["runs"]:
        print(
            f"{r['workers']:>7} {r['msgs_per_s']:>8} {r['window_s']:>9} {r['wall_s']:>8}"
            f" {r['maild_cores_busy']:>11}"
            f" {r['mails_filed']:>6}  {r['states']}"
        )
    if results["ratio_2w_1w"] is not None:
        verdict = "met" if results["ratio_2w_1w"] >= TARGET_RATIO else "MISSED"
        print(f"2 workers / 1 worker: {results['ratio_2w_1w']} (target {TARGET_RATIO}: {verdict})")
    for c in results["spool_put_commits"]:
        print(f"spool-put commits/s from {c['clients']} connection(s): {c['commits_per_s']}")
    print(f"PostgreSQL: {results['postgresql']}")


if __name__ == "__main__":
    sys.exit(main())
