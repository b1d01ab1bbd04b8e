"""IMAP benchmark: ``maild run`` emptying a Dovecot mailbox vs. ``maild ingest`` of the same files.

    python bench/imap.py [--count 2000] [--seed 1] [--workers 1] [--maild PATH] [--workdir DIR]

1. generates the deterministic corpus (bench/corpus.py);
2. starts a throwaway Dovecot (``dovecot`` on PATH or in /usr/sbin; plaintext IMAP on a
   free loopback port, one passwd-file user, Maildir in a temp dir) and APPENDs every
   file to INBOX over one connection (imaplib; timed, but not part of the figures);
3. (a) ``maild ingest CORPUS`` into a fresh SQLite database: wall clock, spawn to exit;
4. (b) ``maild run`` with one ``[[imap]]`` mailbox on that Dovecot and a fresh SQLite
   database: wall clock from spawn until every mail has a spool row, none is pending
   (each is filed: a ticket, a follow-up or quarantine) and INBOX is empty with all of
   them in ``maild/processed``: ticketed and moved;
5. ratio (b)/(a) in messages/s and the verdict against the target (>= 0.7).

Both runs use the same config.toml apart from the database (and the ``[[imap]]``
table, which ``ingest`` ignores), and include interpreter start-up and database
creation. The load average before each run is recorded: on a shared machine the
figures move with it. A table goes to stdout, the figures to bench/out/imap.json.
maild is never imported; any maild executable can be measured.

Exit status: 0 target met; 1 target or a check failed; 2 a part could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

TARGET_RATIO = 0.7
USER, PASSWORD = "support", "bench-secret"
MAX_SIZE = 26214400
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out" / "imap.json"


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_maild(explicit: str | None) -> Path | None:
    if explicit:
        found = shutil.which(explicit)
        return Path(found).absolute() if found else None
    beside = Path(sys.executable).parent / "maild"  # same venv as this interpreter
    if beside.exists():
        return beside
    found = shutil.which("maild")
    return Path(found) if found else None


def find_dovecot() -> str | None:
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def tail(path: Path, n: int = 25) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


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


def db_counts(db: Path) -> dict[str, Any] | None:
    """Spool rows by state and ticket/message rows, or None while the database is not there."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        states = dict(conn.execute("SELECT state, count(*) FROM spool GROUP BY state").fetchall())
        tickets = conn.execute("SELECT count(*) FROM ticket").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM message").fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return {
        "spool_by_state": states,
        "spool_total": sum(states.values()),
        "tickets": tickets,
        "messages": messages,
    }


# --------------------------------------------------------------------------- Dovecot


class Dovecot:
    """A throwaway Dovecot: one user, Maildir under ``root``, plaintext IMAP on loopback."""

    def __init__(self, exe: str, root: Path) -> None:
        self.exe = exe
        self.root = root
        self.port = free_port()

    def start(self, timeout: float = 30) -> None:
        root = self.root
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # imap-login refuses root; mail belongs to `dovecot`
            entry = pwd.getpwnam("dovecot")
            uid, gid = entry.pw_uid, entry.pw_gid
            internal, group, login = "dovecot", "dovecot", "dovenull"
            shutil.chown(root / "mail", uid, gid)
            root.chmod(0o755)  # made by mkdtemp in the system temp dir, which `dovecot` can pass
        else:
            uid, gid = os.getuid(), os.getgid()
            internal = login = group = pwd.getpwuid(uid).pw_name
        (root / "passwd").write_text(
            f"{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{root / 'mail' / USER}\n"
        )
        (root / "dovecot.conf").write_text(
            f"""protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = maild-bench-{uuid.uuid4().hex[:8]}
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/%u
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  chroot =
}}
service anvil {{
  chroot =
}}
"""
        )
        subprocess.run([self.exe, "-c", str(root / "dovecot.conf")], check=True, timeout=30)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the master and wait (bounded) until it is gone or a zombie."""
        try:
            pid = int((self.root / "run" / "master.pid").read_text())
            os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                return
            if stat.rpartition(")")[2].split()[0] == "Z":
                return
            time.sleep(0.05)

    def client(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=60)
        client.login(USER, PASSWORD)
        return client


def append_all(server: Dovecot, paths: list[Path]) -> float:
    """APPEND every file to INBOX (imaplib turns line ends into CRLF); returns seconds."""
    t0 = time.perf_counter()
    client = server.client()
    try:
        for path in paths:
            status, detail = client.append("INBOX", None, None, path.read_bytes())
            if status != "OK":
                raise RuntimeError(f"APPEND {path.name}: {detail!r}")
    finally:
        client.logout()
    return time.perf_counter() - t0


def folder_counts(client: imaplib.IMAP4, processed: str) -> tuple[int, int]:
    """(messages in INBOX, messages in the processed folder; 0 while it does not exist)."""
    counts = []
    for folder in ("INBOX", processed):
        status, data = client.status(folder, "(MESSAGES)")
        if status != "OK" or not data or data[0] is None:
            counts.append(0)
            continue
        text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
        counts.append(int(text.rsplit("MESSAGES", 1)[1].strip(" )")))
    return counts[0], counts[1]


def processed_name(client: imaplib.IMAP4) -> str:
    """maild/processed as this server spells it (Dovecot's Maildir separator is ".")."""
    _, data = client.list('""', '""')
    raw = data[0].decode() if data and isinstance(data[0], bytes) else ""
    parts = raw.split('"')
    delimiter = parts[1] if len(parts) > 2 and parts[1] else "/"
    return f"maild{delimiter}processed"


# --------------------------------------------------------------------------- maild


def write_config(path: Path, db: Path, http_port: int, workers: int, imap_port: int) -> None:
    path.write_text(
        f"""\
[database]
url = "sqlite:///{db}"

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

[[imap]]
name = "bench"
host = "127.0.0.1"
port = {imap_port}
tls = "none"
allow_plaintext = true
username = "{USER}"
password = "{PASSWORD}"
address = "support@example.com"
""",
        encoding="utf-8",
    )


def run_ingest(
    exe: Path, run_dir: Path, corpus_dir: Path, config: Path, timeout: float
) -> dict[str, Any]:
    cwd = run_dir / "cwd"  # empty: no rules/, no templates/ of the operator
    cwd.mkdir(parents=True)
    log = run_dir / "maild-ingest.log"
    argv = [str(exe), "ingest", "--config", str(config), str(corpus_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILD_")}
    res: dict[str, Any] = {"argv": argv, "loadavg_before": loadavg()}
    t0 = time.perf_counter()
    with open(log, "wb") as logf:
        try:
            done = subprocess.run(
                argv, cwd=cwd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=timeout, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            res.update(status="timeout", error=f"killed after {timeout:.0f} s", log_tail=tail(log))
            return res
    seconds = time.perf_counter() - t0
    res.update(returncode=done.returncode, seconds=round(seconds, 3))
    if done.returncode != 0:
        res.update(status="failed", error=f"exit {done.returncode}", log_tail=tail(log))
    else:
        res["status"] = "ok"
    return res


def run_imap(
    exe: Path, run_dir: Path, config: Path, db: Path, server: Dovecot, count: int, timeout: float
) -> dict[str, Any]:
    cwd = run_dir / "cwd"
    cwd.mkdir(parents=True)
    log = run_dir / "maild-run.log"
    argv = [str(exe), "run", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILD_")}
    res: dict[str, Any] = {"argv": argv, "loadavg_before": loadavg()}
    watcher = server.client()
    processed = processed_name(watcher)
    with open(log, "wb") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=logf, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        first_spooled = all_spooled = None
        while True:
            if proc.poll() is not None:
                res.update(status="failed", error=f"maild exited with {proc.returncode}")
                res["log_tail"] = tail(log)
                return res
            if time.monotonic() > deadline:
                res.update(status="timeout", error=f"not done in {timeout:.0f} s", db=db_counts(db))
                res["log_tail"] = tail(log)
                return res
            counts = db_counts(db)
            total = counts["spool_total"] if counts else 0
            if first_spooled is None and total:
                first_spooled = time.perf_counter() - t0
            if all_spooled is None and total >= count:
                all_spooled = time.perf_counter() - t0
            if counts and total >= count and not counts["spool_by_state"].get("pending"):
                inbox, moved = folder_counts(watcher, processed)
                if inbox == 0 and moved >= count:
                    seconds = time.perf_counter() - t0
                    break
            time.sleep(0.05)
        res.update(
            status="ok",
            seconds=round(seconds, 3),
            first_spooled_after_s=round(first_spooled or 0.0, 3),
            all_spooled_after_s=round(all_spooled or 0.0, 3),
            inbox_left=inbox,
            moved=moved,
        )
        return res
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            watcher.logout()
        code = stop_process(proc, 60)
        res["exitcode"] = code
        if code != 0:
            res.setdefault("log_tail", tail(log))


# --------------------------------------------------------------------------- report


def verdict(count: int, ingest: dict[str, Any], imap: dict[str, Any]) -> dict[str, Any]:
    if ingest.get("status") != "ok" or imap.get("status") != "ok":
        return {"verdict": "INCOMPLETE", "ratio": None}
    ingest_rate = count / ingest["seconds"]
    imap_rate = count / imap["seconds"]
    ratio = imap_rate / ingest_rate
    checks = []
    a, b = ingest.get("db") or {}, imap.get("db") or {}
    if b.get("spool_total") != count:
        checks.append(f"IMAP spool rows {b.get('spool_total')} != {count}")
    if a.get("messages") != b.get("messages") or a.get("tickets") != b.get("tickets"):
        checks.append("ticket/message rows differ between ingest and IMAP")
    if imap.get("exitcode") != 0:
        checks.append(f"maild run exited with {imap.get('exitcode')} on SIGTERM")
    ok = ratio >= TARGET_RATIO and not checks
    return {
        "verdict": "PASS" if ok else "FAIL",
        "ingest_messages_per_s": round(ingest_rate, 1),
        "imap_messages_per_s": round(imap_rate, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "check_failures": checks,
    }


def print_report(r: dict[str, Any]) -> None:
    ingest, imap, res = r["ingest"], r["imap"], r["result"]
    print()
    print(f"corpus: {r['corpus']['files']} mails, {r['corpus']['bytes'] / 1e6:.1f} MB;"
          f" APPEND took {r['append_seconds']:.1f} s; cpus {r['host']['cpus']}")  # fmt: skip
    print(
        f"{'run':<26}{'seconds':>9}{'msgs/s':>9}  {'load before':<18}{'tickets':>8}{'messages':>9}"
    )
    for name, part, rate in (
        ("(a) maild ingest", ingest, res.get("ingest_messages_per_s")),
        ("(b) maild run + IMAP", imap, res.get("imap_messages_per_s")),
    ):
        db = part.get("db") or {}
        print(
            f"{name:<26}{part.get('seconds', '-')!s:>9}{rate if rate is not None else '-'!s:>9}  "
            f"{part.get('loadavg_before')!s:<18}{db.get('tickets', '-')!s:>8}"
            f"{db.get('messages', '-')!s:>9}"
        )
        if part.get("status") != "ok":
            print(f"    {part.get('status')}: {part.get('error')}")
            for line in part.get("log_tail", [])[-10:]:
                print(f"    | {line}")
    print(f"ratio (b)/(a): {res.get('ratio')} (target >= {TARGET_RATIO}) -> {res['verdict']}")
    for failure in res.get("check_failures", []):
        print(f"  check failed: {failure}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="maild IMAP benchmark")
    ap.add_argument("--count", type=int, default=2000, help="mails in the corpus (2000)")
    ap.add_argument("--seed", type=int, default=1, help="corpus seed (1)")
    ap.add_argument("--workers", type=int, default=1, help="[daemon] workers of maild run (1)")
    ap.add_argument("--workdir", type=Path, help="keep corpus, databases and logs here")
    ap.add_argument("--maild", help="maild executable (default: next to sys.executable, else PATH)")
    ap.add_argument("--timeout", type=float, default=1800, help="give up a run after N s (1800)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results ({DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be >= 1")
    exe, dovecot = find_maild(args.maild), find_dovecot()
    if exe is None or dovecot is None:
        print(f"cannot run: maild {exe or 'not found'}, dovecot {dovecot or 'not found'}")
        return 2

    tmp = None
    if args.workdir:
        work = args.workdir.absolute()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="maild-bench-imap-")
        work = Path(tmp.name)
    server = Dovecot(dovecot, Path(tempfile.mkdtemp(prefix="maild-bench-dovecot-")))
    try:
        corpus_dir = work / "corpus"
        shutil.rmtree(corpus_dir, ignore_errors=True)
        stats: Counter[str] = Counter()
        print(f"generating {args.count} mails (seed {args.seed}) ...", flush=True)
        paths = corpus.generate(corpus_dir, args.count, args.seed, stats=stats)

        server.start()
        print(f"APPENDing them to a Dovecot on port {server.port} ...", flush=True)
        append_seconds = append_all(server, paths)

        run_a = Path(tempfile.mkdtemp(prefix="ingest-", dir=work))
        config_a = run_a / "config.toml"
        write_config(config_a, run_a / "bench.db", free_port(), args.workers, server.port)
        print(f"(a) {exe} ingest ...", flush=True)
        ingest = run_ingest(exe, run_a, corpus_dir, config_a, args.timeout)
        ingest["db"] = db_counts(run_a / "bench.db")

        run_b = Path(tempfile.mkdtemp(prefix="imap-", dir=work))
        config_b = run_b / "config.toml"
        write_config(config_b, run_b / "bench.db", free_port(), args.workers, server.port)
        print(f"(b) {exe} run, taking the mailbox ...", flush=True)
        imap = run_imap(exe, run_b, config_b, run_b / "bench.db", server, len(paths), args.timeout)
        imap["db"] = db_counts(run_b / "bench.db")

        report: dict[str, Any] = {
            "benchmark": "imap",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
            "params": {"count": args.count, "seed": args.seed, "workers": args.workers},
            "corpus": {"files": len(paths), "bytes": stats["bytes"]},
            "append_seconds": round(append_seconds, 2),
            "ingest": ingest,
            "imap": imap,
        }
        report["result"] = verdict(len(paths), ingest, imap)
        print_report(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"results written to {args.out}")
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
        if tmp is not None:
            tmp.cleanup()
    v = report["result"]["verdict"]
    return 0 if v == "PASS" else 1 if v == "FAIL" else 2


if __name__ == "__main__":
    sys.exit(main())
