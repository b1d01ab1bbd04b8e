"""SMTP benchmark: a bare aiosmtpd sink vs. ``maild run``, at 1, 4 and 16 concurrent clients.

    python bench/smtp.py [--count 600] [--seed 1] [--clients 1,4,16] [--maild PATH]
                         [--connection reuse|per-mail] [--no-extra] [--workdir DIR]

One run generates the deterministic corpus (bench/corpus.py), converts every file to
CRLF line ends once, and sends exactly those bytes, for each client count:

(a) to a sink: a separate Python process (same interpreter) running an
    ``aiosmtpd.controller.Controller`` whose handle_DATA writes the mail to a file and
    answers 250. Throughput is the time from the start of sending until the last 250;
(b) to ``maild run`` (fresh temp dir, fresh SQLite database, cwd without rules/):
    throughput is the time from the start of sending until every sent mail has a spool
    row and none is pending any more, i.e. until the last ticket exists.

Clients are asyncio tasks (aiosmtplib) in this process taking the next mail from one
shared queue. Each keeps one connection open for all its mails (``--connection reuse``,
the default) or opens one per mail (``per-mail``); the same for (a) and (b). Accept
latency is timed per mail from sending MAIL FROM until the final reply to DATA (the
250), and also from sending DATA (JSON only); p50/p99 are over the mails <= 64 KiB.

Targets: ratio (b)/(a) >= 0.8 at 4 clients; p99 accept latency of small mails in (b)
<= 2x the sink's, at every client count. A table goes to stdout, the figures to
bench/out/smtp.json. maild is never imported; any maild executable can be measured.

Exit status: 0 all targets met; 1 a target or a check failed; 2 a part could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

try:
    import aiosmtplib
except ImportError:  # pragma: no cover - reported in main()
    aiosmtplib = None  # type: ignore[assignment]

TARGET_RATIO = 0.8
TARGET_RATIO_CLIENTS = 4
TARGET_P99_FACTOR = 2.0
SMALL_LIMIT = 64 * 1024
RECIPIENT = "support@example.com"
MAX_SIZE = 26214400
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out" / "smtp.json"

# The sink: a separate process, so it does not share this process's GIL. It writes each
# mail's bytes as received (original_content, like maild) to its own file, with no
# fsync (the baseline the targets are against) or, as a reference only, with an fsync
# of the file before the 250 as an MTA that keeps its promise does (maild commits to
# the disk before its 250); it stops on SIGTERM. Same size limit and SMTPUTF8 as maild.
_SINK = r"""
import itertools, os, signal, sys, threading
from aiosmtpd.controller import Controller
directory, port, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
durable = sys.argv[4] == "1"
numbers = itertools.count(1)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        path = os.path.join(directory, "%06d.eml" % next(numbers))
        with open(path, "wb") as f:
            f.write(envelope.original_content)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        return "250 OK"

controller = Controller(Handler(), hostname="127.0.0.1", port=port,
                        data_size_limit=limit, enable_SMTPUTF8=True, ready_timeout=30)
controller.start()
print("ready", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
while not stop.wait(1.0):
    pass
controller.stop()
"""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def find_maild(explicit: str | None) -> Path | None:
    if explicit:
        p = Path(explicit)
        if p.exists():
            return p.absolute()
        found = shutil.which(explicit)
        return Path(found) if found else None
    beside = Path(sys.executable).parent / "maild"  # same venv as this interpreter
    if beside.exists():
        return beside
    found = shutil.which("maild")
    return Path(found) if found else None


def tail(path: Path, n: int = 25) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its live descendants from /proc (Linux; 0 elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, IndexError):
            continue
    return total / tick


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM, wait; SIGKILL the process group we created if it does not go."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# --------------------------------------------------------------------------- corpus


@dataclass
class Mail:
    name: str
    sender: str
    data: bytes  # CRLF line ends; what both targets receive
    eightbit: bool

    @property
    def small(self) -> bool:
        return len(self.data) <= SMALL_LIMIT


_LINE_END = re.compile(rb"\r?\n")


def load_mails(paths: list[Path]) -> list[Mail]:
    parser = BytesHeaderParser(policy=compat32)
    mails = []
    for p in paths:
        raw = p.read_bytes()
        data = _LINE_END.sub(b"\r\n", raw)
        headers = parser.parsebytes(raw[:65536])
        sender = email.utils.parseaddr(str(headers.get("From", "")))[1]
        mails.append(Mail(p.name, sender, data, any(b > 127 for b in data)))
    return mails


WARMUP = (
    # From our own support address and threading to nothing: maild ignores it as a loop,
    # so it makes no ticket and the corpus's ticket numbers stay 1, 2, 3, ...
    b"From: Example Support <support@example.com>\r\n"
    b"To: support@example.com\r\n"
    b"Subject: smtp bench warm-up\r\n"
    b"Message-ID: <warmup@bench.invalid>\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"warm-up, not counted\r\n"
)


# --------------------------------------------------------------------------- clients


@dataclass
class Sent:
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    from_mail: list[float] = field(default_factory=list)  # small mails only
    from_data: list[float] = field(default_factory=list)  # small mails only
    from_mail_all: list[float] = field(default_factory=list)
    last_250: float | None = None


async def _client(
    port: int, queue: asyncio.Queue[Mail], sent: Sent, reuse: bool, timeout: float
) -> None:
    smtp: aiosmtplib.SMTP | None = None

    async def close() -> None:
        nonlocal smtp
        if smtp is not None:
            with contextlib.suppress(Exception):
                if smtp.is_connected:
                    await smtp.quit()
            with contextlib.suppress(Exception):
                smtp.close()
        smtp = None

    try:
        while True:
            try:
                mail = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                if smtp is None:
                    smtp = aiosmtplib.SMTP(
                        hostname="127.0.0.1",
                        port=port,
                        timeout=timeout,
                        start_tls=False,
                        local_hostname="bench.localhost",
                    )
                    await smtp.connect()
                    await smtp.ehlo()
                options = ["BODY=8BITMIME"] if mail.eightbit else []
                t0 = time.perf_counter()
                await smtp.mail(mail.sender, options=options)
                await smtp.rcpt(RECIPIENT)
                t1 = time.perf_counter()
                response = await smtp.data(mail.data)
                t2 = time.perf_counter()
                if response.code != 250:
                    raise RuntimeError(f"DATA answered {response.code} {response.message}")
                sent.ok += 1
                sent.last_250 = t2 if sent.last_250 is None else max(sent.last_250, t2)
                sent.from_mail_all.append(t2 - t0)
                if mail.small:
                    sent.from_mail.append(t2 - t0)
                    sent.from_data.append(t2 - t1)
                if not reuse:
                    await close()
            except Exception as e:  # a refused mail is a finding, not a crash
                sent.errors.append(f"{mail.name}: {type(e).__name__}: {e}")
                await close()
    finally:
        await close()


async def send_all(
    port: int, mails: list[Mail], clients: int, reuse: bool, timeout: float
) -> tuple[Sent, float, float]:
    """Send every mail with ``clients`` concurrent clients; (result, t_start, t_end)."""
    queue: asyncio.Queue[Mail] = asyncio.Queue()
    for m in mails:
        queue.put_nowait(m)
    sent = Sent()
    t_start = time.perf_counter()
    tasks = [
        asyncio.create_task(_client(port, queue, sent, reuse, timeout)) for _ in range(clients)
    ]
    # Overall cap: generous, but the run cannot hang.
    done, pending = await asyncio.wait(tasks, timeout=max(timeout * 10, 600))
    for t in pending:
        t.cancel()
        sent.errors.append("client task cancelled: overall send timeout")
    for t in done:
        if t.exception() is not None:
            sent.errors.append(f"client task failed: {t.exception()!r}")
    return sent, t_start, time.perf_counter()


def send_one(port: int, mail: Mail, timeout: float) -> Sent:
    sent, _, _ = asyncio.run(send_all(port, [mail], 1, True, timeout))
    return sent


def latency_summary(sent: Sent) -> dict[str, Any]:
    return {
        "small_mails": len(sent.from_mail),
        "p50_ms": ms(percentile(sent.from_mail, 50)),
        "p99_ms": ms(percentile(sent.from_mail, 99)),
        "max_ms": ms(max(sent.from_mail) if sent.from_mail else None),
        "from_data_p50_ms": ms(percentile(sent.from_data, 50)),
        "from_data_p99_ms": ms(percentile(sent.from_data, 99)),
        "all_sizes_p50_ms": ms(percentile(sent.from_mail_all, 50)),
        "all_sizes_p99_ms": ms(percentile(sent.from_mail_all, 99)),
    }


# --------------------------------------------------------------------------- (a) sink


def run_sink(
    run_dir: Path, mails: list[Mail], clients: int, reuse: bool, timeout: float, durable: bool
) -> dict[str, Any]:
    out_dir = run_dir / "mails"
    out_dir.mkdir(parents=True)
    log = run_dir / "sink.log"
    port = free_port()
    target = "sink_fsync" if durable else "sink"
    res: dict[str, Any] = {"target": target, "clients": clients, "port": port}
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SINK,
                str(out_dir),
                str(port),
                str(MAX_SIZE),
                str(int(durable)),
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not port_accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                res.update(status="failed", error="sink did not start", log_tail=tail(log))
                return res
            time.sleep(0.05)
        warm = send_one(port, Mail("warm-up", "support@example.com", WARMUP, False), timeout)
        if warm.ok != 1:
            res.update(status="failed", error=f"warm-up mail refused: {warm.errors}")
            return res
        res["loadavg_before"] = loadavg()
        cpu0 = tree_cpu_seconds(proc.pid)
        sent, t_start, t_end = asyncio.run(send_all(port, mails, clients, reuse, timeout))
        cpu1 = tree_cpu_seconds(proc.pid)
        seconds = (sent.last_250 or t_end) - t_start
        written = sum(1 for _ in out_dir.iterdir()) - 1  # minus the warm-up
        res.update(
            status="ok" if sent.ok == len(mails) and written == len(mails) else "errors",
            sent=len(mails),
            accepted=sent.ok,
            files_written=written,
            seconds=round(seconds, 4),
            messages_per_s=round(sent.ok / seconds, 1) if seconds > 0 else None,
            latency=latency_summary(sent),
            server_cpu_s=round(cpu1 - cpu0, 2),
            errors=len(sent.errors),
            error_samples=sent.errors[:10],
        )
        return res
    finally:
        code = stop_process(proc, 20)
        res["exitcode"] = code
        with contextlib.suppress(OSError):
            shutil.rmtree(out_dir)


# --------------------------------------------------------------------------- (b) maild


def write_config(path: Path, db: Path, smtp_port: int, http_port: int, workers: int) -> None:
    # Acknowledgements are queued as usual (part of processing); the relay they go to is
    # a closed loopback port, so nothing is ever delivered anywhere.
    closed_port = free_port()
    path.write_text(
        f"""\
[database]
url = "sqlite:///{db}"

[[listener]]
host = "127.0.0.1"
port = {smtp_port}

[http]
enabled = true
host = "127.0.0.1"
port = {http_port}

[logging]
level = "WARNING"

[daemon]
workers = {workers}

[mail]
max_message_size = {MAX_SIZE}

[outbound]
host = "127.0.0.1"
port = {closed_port}
""",
        encoding="utf-8",
    )


def _db_report(db: Path, after_id: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as e:
        return {"warning": f"cannot open {db}: {e}"}
    try:
        out["spool_states"] = dict(
            conn.execute(
                "SELECT state, count(*) FROM spool WHERE id > ? GROUP BY state", (after_id,)
            ).fetchall()
        )
        for table in ("ticket", "message", "outbox"):
            try:
                out[f"{table}_rows"] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            except sqlite3.Error as e:
                out[f"{table}_rows"] = None
                out.setdefault("warnings", []).append(f"{table}: {e}")
    except sqlite3.Error as e:
        out["warning"] = str(e)
    finally:
        conn.close()
    return out


def _healthz(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return dict(json.loads(r.read()))
    except Exception:
        return None


def _wait_processed(
    proc: subprocess.Popen[bytes], db: Path, after_id: int, expected: int, timeout: float
) -> tuple[float | None, tuple[int, int, int] | None]:
    """Poll until ``expected`` rows above ``after_id`` exist and none is pending.

    Returns (time it was seen, last counts); time None on timeout or a dead maild.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, last
        counts = _db_counts_after(db, after_id)
        if counts is not None:
            last = counts
            rows, pending = counts[1], counts[2]
            if rows >= expected and pending == 0:
                return time.perf_counter(), last
        time.sleep(0.02)
    return None, last


def _db_counts_after(db: Path, after_id: int) -> tuple[int, int, int] | None:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute(
            "SELECT coalesce(max(id), 0), count(*), coalesce(sum(state = 'pending'), 0) "
            "FROM spool WHERE id > ?",
            (after_id,),
        ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def run_maild(
    exe: Path,
    run_dir: Path,
    mails: list[Mail],
    clients: int,
    workers: int,
    reuse: bool,
    timeout: float,
    process_timeout: float,
) -> dict[str, Any]:
    cwd = run_dir / "cwd"  # empty: no rules/, no templates/ of the operator
    cwd.mkdir(parents=True)
    db = run_dir / "bench.db"
    config = run_dir / "config.toml"
    log = run_dir / "maild-run.log"
    smtp_port, http_port = free_port(), free_port()
    write_config(config, db, smtp_port, http_port, workers)
    argv = [str(exe), "run", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILD_")}
    res: dict[str, Any] = {
        "target": "maild",
        "clients": clients,
        "workers": workers,
        "argv": argv,
        "run_dir": str(run_dir),
    }
    with open(log, "wb") as logf:
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            res.update(status="failed", error=f"cannot start {exe}: {e}")
            return res
    try:
        deadline = time.monotonic() + 60
        while not (port_accepts(smtp_port) and _healthz(http_port) is not None):
            if proc.poll() is not None:
                res.update(
                    status="failed",
                    error=f"maild exited with {proc.returncode} before it was ready",
                    log_tail=tail(log),
                )
                return res
            if time.monotonic() > deadline:
                res.update(status="failed", error="maild not ready in 60 s", log_tail=tail(log))
                return res
            time.sleep(0.05)
        # Warm-up: one mail through listener and worker (the worker processes are
        # spawned and import the pipeline on their first mail); not timed, not counted.
        warm = send_one(smtp_port, Mail("warm-up", "support@example.com", WARMUP, False), timeout)
        if warm.ok != 1:
            res.update(status="failed", error=f"warm-up refused: {warm.errors}", log_tail=tail(log))
            return res
        seen, counts = _wait_processed(proc, db, 0, 1, 120)
        if seen is None:
            res.update(
                status="failed", error=f"warm-up not processed ({counts})", log_tail=tail(log)
            )
            return res
        after_id = counts[0] if counts else 0

        res["loadavg_before"] = loadavg()
        cpu0 = tree_cpu_seconds(proc.pid)
        sent, t_start, t_end = asyncio.run(send_all(smtp_port, mails, clients, reuse, timeout))
        accept_seconds = (sent.last_250 or t_end) - t_start
        done_at, counts = _wait_processed(proc, db, after_id, sent.ok, process_timeout)
        cpu1 = tree_cpu_seconds(proc.pid)
        res.update(
            sent=len(mails),
            accepted=sent.ok,
            accept_seconds=round(accept_seconds, 4),
            accept_messages_per_s=(
                round(sent.ok / accept_seconds, 1) if accept_seconds > 0 else None
            ),
            latency=latency_summary(sent),
            server_cpu_s=round(cpu1 - cpu0, 2),
            errors=len(sent.errors),
            error_samples=sent.errors[:10],
            health=_healthz(http_port),
        )
        if done_at is None:
            alive = proc.poll() is None
            res.update(
                status="failed",
                error=(
                    f"spool not drained in {process_timeout:.0f} s (rows, pending: {counts})"
                    if alive
                    else f"maild exited with {proc.returncode} while processing"
                ),
                log_tail=tail(log),
            )
        else:
            seconds = done_at - t_start
            res.update(
                status="ok" if sent.ok == len(mails) else "errors",
                seconds=round(seconds, 4),
                messages_per_s=round(sent.ok / seconds, 1) if seconds > 0 else None,
                drain_after_last_250_s=round(done_at - (sent.last_250 or t_end), 4),
            )
        res["db"] = _db_report(db, after_id)
        return res
    finally:
        t0 = time.monotonic()
        code = stop_process(proc, 60)
        res["stop_seconds"] = round(time.monotonic() - t0, 2)
        res["exitcode"] = code
        if code != 0:
            res.setdefault("log_tail", tail(log))
        if res.get("status") == "ok" and code != 0:
            res["status"] = "errors"
            res.setdefault("error", f"maild exited with {code} on SIGTERM")


# --------------------------------------------------------------------------- report


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []
    incomplete = False
    for row in rows:
        sink, mdl = row["sink"], row["maild"]
        if sink.get("status") not in ("ok", "errors") or mdl.get("status") not in ("ok", "errors"):
            incomplete = True
            continue
        if sink.get("status") != "ok" or mdl.get("status") != "ok":
            checks.append(
                {
                    "check": f"all mails accepted and processed ({row['label']})",
                    "ok": False,
                    "value": f"sink {sink.get('status')}, maild {mdl.get('status')}",
                }
            )
        ratio = row.get("ratio")
        if row["clients"] == TARGET_RATIO_CLIENTS and row["workers"] == 1:
            checks.append(
                {
                    "check": f"ratio (b)/(a) at {TARGET_RATIO_CLIENTS} clients >= {TARGET_RATIO}",
                    "ok": ratio is not None and ratio >= TARGET_RATIO,
                    "value": ratio,
                }
            )
        if row["workers"] == 1:
            factor = row.get("p99_factor")
            checks.append(
                {
                    "check": (
                        f"p99 small-mail accept latency <= {TARGET_P99_FACTOR:g}x sink "
                        f"({row['clients']} clients)"
                    ),
                    "ok": factor is not None and factor <= TARGET_P99_FACTOR,
                    "value": factor,
                }
            )
    if incomplete or not checks:
        v = "INCOMPLETE"
    elif all(c["ok"] for c in checks):
        v = "PASS"
    else:
        v = "FAIL"
    return {"checks": checks, "verdict": v}


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def print_table(rows: list[dict[str, Any]], result: dict[str, Any]) -> None:
    head = (
        f"{'clients':>7} {'target':<16} {'msgs/s':>8} {'accept/s':>8} {'ratio':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'p99 x':>6} {'cpu s':>6} {'load1':>5}  status"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        for key in ("sink", "sink_fsync", "maild"):
            r = row[key]
            lat = r.get("latency", {})
            name = {"sink": "(a) sink", "sink_fsync": "    sink+fsync"}.get(
                key, f"(b) maild w={row['workers']}"
            )
            accept = r.get("messages_per_s") if key != "maild" else r.get("accept_messages_per_s")
            load = (r.get("loadavg_before") or [None])[0]
            status = r.get("status", "?")
            if r.get("error"):
                status += f": {r['error']}"
            print(
                f"{row['clients']:>7} {name:<16} {_f(r.get('messages_per_s')):>8} "
                f"{_f(accept):>8} "
                f"{_f(row.get('ratio') if key == 'maild' else None, '{:.2f}'):>6} "
                f"{_f(lat.get('p50_ms'), '{:.2f}'):>8} {_f(lat.get('p99_ms'), '{:.2f}'):>8} "
                f"{_f(row.get('p99_factor') if key == 'maild' else None, '{:.2f}'):>6} "
                f"{_f(r.get('server_cpu_s'), '{:.1f}'):>6} {_f(load, '{:.2f}'):>5}  {status}"
            )
    print()
    print(
        "msgs/s: sink = until the last 250; maild = until the last mail is processed "
        "(no pending spool row). accept/s: until the last 250."
    )
    print(
        f"latency: from sending MAIL FROM to the final 250 after DATA, mails <= "
        f"{SMALL_LIMIT // 1024} KiB. p99 x = maild p99 / sink p99. cpu s = server process "
        "tree CPU during the send."
    )
    print(
        "sink+fsync (reference, no target): the sink with an fsync before each 250. "
        "maild vs it, ratio / p99 x: "
        + ", ".join(
            f"{row['clients']}c w={row['workers']}: {_f(row.get('ratio_vs_fsync_sink'), '{:.2f}')}"
            f" / {_f(row.get('p99_factor_vs_fsync_sink'), '{:.2f}')}"
            for row in rows
        )
    )
    print()
    for c in result["checks"]:
        print(f"  [{'ok' if c['ok'] else 'FAIL':>4}] {c['check']}: {c['value']}")
    print(f"verdict: {result['verdict']}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    ap.add_argument("--maild", help="maild executable (default: bin/maild beside python)")
    ap.add_argument(
        "--connection",
        choices=("reuse", "per-mail"),
        default="reuse",
        help="one connection per client for all its mails, or one per mail",
    )
    ap.add_argument(
        "--no-extra", action="store_true", help="skip the maild workers=2 row at 4 clients"
    )
    ap.add_argument("--workdir", type=Path, help="keep corpus and run dirs here")
    ap.add_argument("--timeout", type=float, default=60.0, help="per SMTP command, seconds")
    ap.add_argument(
        "--process-timeout", type=float, default=300.0, help="wait for maild to drain, seconds"
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    try:
        client_counts = [int(x) for x in args.clients.split(",") if x.strip()]
    except ValueError:
        ap.error("--clients: comma-separated integers")
    if not client_counts or min(client_counts) < 1 or args.count < 1:
        ap.error("--clients and --count must be positive")
    if aiosmtplib is None:
        print("smtp.py: the aiosmtplib package is not installed", file=sys.stderr)
        return 2
    try:
        import aiosmtpd  # noqa: F401  (the sink needs it; fail early)
    except ImportError:
        print("smtp.py: the aiosmtpd package is not installed", file=sys.stderr)
        return 2
    exe = find_maild(args.maild)
    if exe is None:
        where = (
            f"--maild {args.maild!r} is neither a file nor on PATH"
            if args.maild
            else f"not at {Path(sys.executable).parent / 'maild'} nor on PATH "
            "(install maild into this venv or pass --maild PATH)"
        )
        print(f"smtp.py: no maild executable: {where}", file=sys.stderr)
        return 2
    reuse = args.connection == "reuse"

    started = datetime.now(UTC)
    load_start = loadavg()
    print(f"load average at start (1/5/15 min): {load_start}  cpus: {os.cpu_count()}")
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = args.workdir.absolute()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="smtp-bench-")))
        corpus_dir = work / "corpus"
        t0 = time.perf_counter()
        if corpus_dir.exists():
            shutil.rmtree(corpus_dir)
        paths = corpus.generate(corpus_dir, count=args.count, seed=args.seed)
        gen_s = time.perf_counter() - t0
        mails = load_mails(paths)
        small = sum(m.small for m in mails)
        total_bytes = sum(len(m.data) for m in mails)
        print(
            f"corpus: {len(mails)} mails, {total_bytes / 1e6:.1f} MB after CRLF, "
            f"{small} <= {SMALL_LIMIT // 1024} KiB (generated in {gen_s:.1f} s); "
            f"maild: {exe}; connection: {args.connection}"
        )

        plan = [(n, 1) for n in client_counts]
        if not args.no_extra:
            plan.append((TARGET_RATIO_CLIENTS, 2))
        rows: list[dict[str, Any]] = []
        for i, (clients, workers) in enumerate(plan):
            label = f"{clients} clients, workers={workers}"
            print(f"[{i + 1}/{len(plan)}] {label}: sink ...", end=" ", flush=True)
            run_dir = Path(tempfile.mkdtemp(prefix=f"run-{clients}c-{workers}w-", dir=work))
            sink = run_sink(run_dir / "sink", mails, clients, reuse, args.timeout, False)
            print(f"{_f(sink.get('messages_per_s'))} msgs/s; fsync sink ...", end=" ", flush=True)
            sink_fsync = run_sink(run_dir / "sink-fsync", mails, clients, reuse, args.timeout, True)
            print(f"{_f(sink_fsync.get('messages_per_s'))} msgs/s; maild ...", end=" ", flush=True)
            mdl = run_maild(
                exe,
                run_dir / "maild",
                mails,
                clients,
                workers,
                reuse,
                args.timeout,
                args.process_timeout,
            )
            print(f"{_f(mdl.get('messages_per_s'))} msgs/s ({mdl.get('status')})", flush=True)
            row: dict[str, Any] = {
                "label": label,
                "clients": clients,
                "workers": workers,
                "sink": sink,
                "sink_fsync": sink_fsync,
                "maild": mdl,
            }
            a, b = sink.get("messages_per_s"), mdl.get("messages_per_s")
            row["ratio"] = round(b / a, 3) if a and b else None
            pa = sink.get("latency", {}).get("p99_ms")
            pb = mdl.get("latency", {}).get("p99_ms")
            row["p99_factor"] = round(pb / pa, 2) if pa and pb else None
            # Reference only (no target): the same against the sink that fsyncs.
            af, pf = sink_fsync.get("messages_per_s"), sink_fsync.get("latency", {}).get("p99_ms")
            row["ratio_vs_fsync_sink"] = round(b / af, 3) if af and b else None
            row["p99_factor_vs_fsync_sink"] = round(pb / pf, 2) if pf and pb else None
            rows.append(row)
            if not args.workdir:
                shutil.rmtree(run_dir, ignore_errors=True)

    result = verdict(rows)
    print()
    print_table(rows, result)
    load_end = loadavg()
    print(f"load average at end (1/5/15 min): {load_end}")

    report = {
        "started": started.isoformat(timespec="seconds"),
        "corpus": {
            "count": len(mails),
            "seed": args.seed,
            "bytes_crlf": total_bytes,
            "small_mails": small,
            "small_limit_bytes": SMALL_LIMIT,
            "generation_seconds": round(gen_s, 2),
        },
        "method": {
            "connection": args.connection,
            "clients": "asyncio tasks (aiosmtplib) in one process, one shared queue of mails",
            "recipient": RECIPIENT,
            "sender": "address of the mail's From header",
            "latency": "from sending MAIL FROM to the final 250 after DATA (from_data_*: "
            "from sending DATA); mails <= small_limit_bytes; nearest-rank percentiles",
            "sink_seconds": "first MAIL FROM .. last 250",
            "maild_seconds": "first MAIL FROM .. no pending spool row and all sent rows present",
            "warm_up": "one ignored mail per target before timing, not counted",
        },
        "maild": str(exe),
        "rows": rows,
        "result": result,
        "host": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return {"PASS": 0, "FAIL": 1}.get(result["verdict"], 2)


if __name__ == "__main__":
    sys.exit(main())
