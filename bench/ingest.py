"""Ingest benchmark: bare mail-parser throughput vs. ``maild ingest`` end to end.

    python bench/ingest.py [--count 2000] [--seed 1] [--workdir DIR] [--maild PATH] [--runs 3]

1. generates the deterministic corpus (bench/corpus.py) into a temp dir (or DIR/corpus);
2. (a) bare parse rate: all files are read into memory, then
   ``mailparser.parse_from_bytes(raw)`` is called on each; best of 3 passes;
3. (b) end to end: ``maild ingest CORPUS`` runs as a subprocess with
   ``MAILD_DATABASE_URL=sqlite:///<run>/bench.db`` in a fresh cwd; wall clock from
   start to exit, peak RSS of that child from ``os.wait4`` (exact, its own); best of
   3 runs, each on a fresh database, as (a) is the best of 3 passes, and the two take
   turns (a pass, a run, a pass ...): on a shared machine the speed changes for seconds
   at a time, and measured one after the other, (a) and (b) could land in different
   spells. Every run is reported; peak RSS is the highest of them;
4. (c) ratio (b)/(a) and the verdict against the targets (ratio >= 0.75,
   peak RSS <= 150 MiB), plus the rows found in the SQLite database.

A table goes to stdout, the figures to bench/out/ingest.json. maild is never
imported: any maild executable can be measured.

Exit status: 0 all targets met; 1 a target or the row check failed;
2 the end-to-end run could not be done (no executable, non-zero exit, timeout).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

TARGET_RATIO = 0.75
TARGET_RSS_MIB = 150.0
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out" / "ingest.json"


# --------------------------------------------------------------------------- (a)


def bare_parse(
    paths: list[Path], passes: int, after_pass: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """Parse every file with mail-parser ``passes`` times; the best pass counts.
    ``after_pass`` runs after each pass (the end-to-end runs, taken turn about)."""
    try:
        import mailparser
    except ImportError:
        return {"status": "not-installed", "error": "the mail-parser package is not installed"}
    try:
        from mailparser.version import __version__ as mp_version
    except ImportError:  # pragma: no cover
        mp_version = "?"
    # mail-parser logs its own warnings; they would only cost time and noise here.
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)

    raws = [p.read_bytes() for p in paths]
    errors: list[str] = []
    times = []
    for i in range(passes):
        gc.collect()
        t0 = time.perf_counter()
        for p, raw in zip(paths, raws, strict=True):
            try:
                mailparser.parse_from_bytes(raw)
            except Exception as e:  # a parse failure is a finding, not a crash
                if i == 0:
                    errors.append(f"{p.name}: {type(e).__name__}: {e}")
        times.append(time.perf_counter() - t0)
        after_pass()
    del raws
    gc.collect()
    best = min(times)
    return {
        "status": "ok",
        "library": f"mail-parser {mp_version}",
        "passes_seconds": [round(t, 4) for t in times],
        "best_seconds": round(best, 4),
        "messages_per_s": round(len(paths) / best, 1),
        "errors": len(errors),
        "error_samples": errors[:10],
    }


# --------------------------------------------------------------------------- (b)


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


def _tree_rss_bytes(pid: int) -> int:
    """Summed RSS of ``pid`` and its descendants from /proc (Linux; 0 elsewhere)."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    total = 0
    todo = [pid]
    seen = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


def _maxrss_mib(ru_maxrss: int) -> float:
    # Linux reports KiB, macOS bytes.
    return ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else ru_maxrss / 1024


def _tail(path: Path, n: int = 25) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


# maild is started by this tiny helper (python -I -S, stdlib os/json/time only), not by
# the benchmark process itself: on Linux an exec'd child keeps the RSS high-water mark
# of the process it was forked from (signal->maxrss survives exec, and vfork/posix_spawn
# share the parent's mm), so spawning straight from here would report the benchmark's
# own memory - the corpus it holds for (a) - as maild's peak. The helper is a few MB,
# far below any Python program's own RSS, so the figure it reads with os.wait4 for its
# one child is maild's own. It also times the child from spawn to exit.
_SPAWN_HELPER = r"""
import json, os, sys, time
argv, log, cwd = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
os.chdir(cwd)
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
acts = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2),
        (os.POSIX_SPAWN_CLOSE, fd)]
t0 = time.perf_counter()
try:
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=acts)
except OSError as e:
    print(json.dumps({"spawn_error": str(e)}), flush=True)
    sys.exit(0)
print(json.dumps({"pid": pid}), flush=True)
_, status, ru = os.wait4(pid, 0)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "exitcode": os.waitstatus_to_exitcode(status),
                  "maxrss": ru.ru_maxrss, "utime": ru.ru_utime, "stime": ru.ru_stime}),
      flush=True)
"""


def end_to_end(
    exe: Path | None, corpus_dir: Path, run_dir: Path, count: int, timeout: float
) -> dict[str, Any]:
    db = run_dir / "bench.db"
    cwd = run_dir / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    log = run_dir / "maild-ingest.log"
    res: dict[str, Any] = {"database": str(db), "log": str(log)}
    if exe is None:
        res.update(
            status="not-found",
            error=(
                f"no maild executable: not at {Path(sys.executable).parent / 'maild'} "
                "nor on PATH (install maild into this venv or pass --maild PATH)"
            ),
        )
        return res
    argv = [str(exe.absolute()), "ingest", str(corpus_dir.absolute())]
    env = dict(os.environ)
    env["MAILD_DATABASE_URL"] = f"sqlite:///{db.absolute()}"
    res.update(
        executable=str(exe),
        argv=argv,
        cwd=str(cwd),
        env={k: v for k, v in env.items() if k.startswith("MAILD_")},
    )

    helper = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _SPAWN_HELPER, json.dumps(argv), str(log), str(cwd)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        start_new_session=True,  # maild inherits the process group: a timeout kills both
    )  # fmt: skip
    assert helper.stdout is not None
    first = json.loads(helper.stdout.readline() or "{}")
    if "pid" not in first:
        helper.wait()
        res.update(status="error", error=f"cannot start {exe}: {first.get('spawn_error', '?')}")
        return res

    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not done.wait(0.05):
            peak_tree = max(peak_tree, _tree_rss_bytes(first["pid"]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, _ = helper.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(helper.pid, signal.SIGKILL)  # the session started above
        helper.communicate()
        res.update(status="timeout", error=f"killed after {timeout:.0f} s", log_tail=_tail(log))
        return res
    finally:
        done.set()
        sampler.join()
    try:
        r = json.loads(out.strip().splitlines()[-1])
        seconds = float(r["seconds"])
    except (ValueError, KeyError, IndexError):
        res.update(status="error", error=f"spawn helper failed: {out!r}", log_tail=_tail(log))
        return res

    res.update(
        returncode=r["exitcode"],
        seconds=round(seconds, 3),
        messages_per_s=round(count / seconds, 1),
        peak_rss_mib=round(_maxrss_mib(r["maxrss"]), 1),
        sampled_tree_peak_rss_mib=round(peak_tree / 2**20, 1) if peak_tree else None,
        user_cpu_s=round(r["utime"], 2),
        sys_cpu_s=round(r["stime"], 2),
    )
    if r["exitcode"] != 0:
        res.update(
            status="failed",
            error=f"maild ingest exited with status {r['exitcode']}",
            log_tail=_tail(log),
        )
    else:
        res["status"] = "ok"
    return res


def db_rows(db: Path) -> dict[str, Any]:
    """Row counts after the ingest; missing tables give warnings, not a crash."""
    out: dict[str, Any] = {"spool_by_state": None, "spool_total": None, "message_count": None}
    warnings: list[str] = []
    out["warnings"] = warnings
    if not db.exists():
        warnings.append(f"database {db} was not created")
        return out
    try:
        con = sqlite3.connect(db)
    except sqlite3.Error as e:
        warnings.append(f"cannot open {db}: {e}")
        return out
    try:
        try:
            rows = con.execute("SELECT state, count(*) FROM spool GROUP BY state").fetchall()
            out["spool_by_state"] = {str(s): n for s, n in rows}
            out["spool_total"] = sum(n for _, n in rows)
        except sqlite3.Error as e:
            warnings.append(f"spool: {e}")
        try:
            out["message_count"] = con.execute("SELECT count(*) FROM message").fetchone()[0]
        except sqlite3.Error as e:
            warnings.append(f"message: {e}")
    finally:
        con.close()
    return out


# --------------------------------------------------------------------------- report


def best_of(done: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of the end-to-end runs, with every run's figures under "runs" and the
    highest peak RSS of them all; a run that did not succeed is the result instead."""
    failed = [r for r in done if r["status"] != "ok"]
    if failed:
        return failed[0]
    best = dict(min(done, key=lambda r: r["seconds"]))
    best["runs"] = [
        {k: r[k] for k in ("seconds", "messages_per_s", "peak_rss_mib", "user_cpu_s", "sys_cpu_s")}
        for r in done
    ]
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in done)
    return best


def verdict(
    count: int, parse: dict[str, Any], e2e: dict[str, Any], db: dict[str, Any]
) -> dict[str, Any]:
    checks: dict[str, bool | None] = {"ratio": None, "peak_rss": None, "spool_rows": None}
    ratio = None
    if e2e.get("status") == "ok":
        if parse.get("status") == "ok":
            ratio = round(e2e["messages_per_s"] / parse["messages_per_s"], 3)
            checks["ratio"] = ratio >= TARGET_RATIO
        checks["peak_rss"] = e2e["peak_rss_mib"] <= TARGET_RSS_MIB
        if db.get("spool_total") is not None:
            checks["spool_rows"] = db["spool_total"] == count
    if e2e.get("status") != "ok" or parse.get("status") != "ok":
        v = "INCOMPLETE"
    elif checks["ratio"] is False or checks["peak_rss"] is False or checks["spool_rows"] is False:
        v = "FAIL"
    elif checks["spool_rows"] is None:
        v = "PASS (spool rows not checked)"
    else:
        v = "PASS"
    return {"ratio": ratio, "checks": checks, "verdict": v}


def _mark(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[ok]


def print_report(r: dict[str, Any]) -> None:
    c, p, e, d, v = r["corpus"], r["parse"], r["e2e"], r["db"], r["result"]
    mix = c["mix"]
    print()
    print(
        f"corpus   {c['files']} mails, {c['bytes'] / 1e6:.1f} MB "
        f"(attachment payload {mix.get('attachment_bytes', 0) / 1e6:.1f} MB), "
        f"seed {r['params']['seed']}, generated in {c['generate_seconds']:.1f} s"
    )
    print(
        f"         new {mix.get('kind:new', 0)}, replies {mix.get('kind:reply', 0)} "
        f"(tagged {mix.get('reply:tagged', 0)}), auto-replies {mix.get('kind:auto', 0)}, "
        f"bounces {mix.get('kind:bounce', 0)}; with attachments "
        f"{mix.get('with_attachments', 0)} ({mix.get('attachments', 0)} files, "
        f"{mix.get('attachments_over_1MB', 0)} > 1 MB), html-only {mix.get('html_only', 0)}"
    )
    print(
        "         " + ", ".join(f"{k[8:]} {n}" for k, n in mix.items() if k.startswith("charset:"))
    )
    print("         " + ", ".join(f"{k[4:]} {n}" for k, n in mix.items() if k.startswith("cte:")))
    print()
    w = 26
    print(f"{'':<{w}} {'seconds':>9} {'msg/s':>9}  notes")
    if p["status"] == "ok":
        print(
            f"{'(a) bare parse':<{w}} {p['best_seconds']:>9.2f} {p['messages_per_s']:>9.1f}  "
            f"{p['library']}, best of {len(p['passes_seconds'])}, {p['errors']} errors"
        )
    else:
        print(f"{'(a) bare parse':<{w}} {'-':>9} {'-':>9}  {p['error']}")
    if e["status"] == "ok":
        tree = e.get("sampled_tree_peak_rss_mib")
        tree_s = f", sampled tree {tree:.1f} MiB" if tree else ""
        print(
            f"{'(b) maild ingest':<{w}} {e['seconds']:>9.2f} {e['messages_per_s']:>9.1f}  "
            f"peak RSS {e['peak_rss_mib']:.1f} MiB{tree_s}, "
            f"cpu {e['user_cpu_s']}+{e['sys_cpu_s']} s"
        )
        if len(e["runs"]) > 1:
            runs = ", ".join(f"{run['seconds']:.2f}" for run in e["runs"])
            ratios = ""
            if p["status"] == "ok":
                each = [run["messages_per_s"] / p["messages_per_s"] for run in e["runs"]]
                ratios = " (ratios " + ", ".join(f"{x:.3f}" for x in each) + ")"
            print(f"{'    each run':<{w}} {runs} s{ratios}; peak RSS is the highest")
    else:
        secs = f"{e['seconds']:.2f}" if "seconds" in e else "-"
        print(f"{'(b) maild ingest':<{w}} {secs:>9} {'-':>9}  {e['status'].upper()}: {e['error']}")
    ratio = v["ratio"]
    print()
    print(
        f"{'(c) ratio (b)/(a)':<{w}} {ratio if ratio is not None else '-':>9}  "
        f"target >= {TARGET_RATIO}   {_mark(v['checks']['ratio'])}"
    )
    rss = e.get("peak_rss_mib") if e["status"] == "ok" else None
    print(
        f"{'    peak RSS (MiB)':<{w}} {rss if rss is not None else '-':>9}  "
        f"target <= {TARGET_RSS_MIB:.0f}    {_mark(v['checks']['peak_rss'])}"
    )
    if d["spool_by_state"] is not None:
        states = ", ".join(f"{s}={n}" for s, n in sorted(d["spool_by_state"].items())) or "empty"
        print(
            f"{'    spool rows':<{w}} {d['spool_total']:>9}  expected {c['files']}"
            f"        {_mark(v['checks']['spool_rows'])}  ({states})"
        )
    if d["message_count"] is not None:
        print(f"{'    message rows':<{w}} {d['message_count']:>9}")
    for wmsg in d["warnings"]:
        print(f"WARNING: {wmsg}")
    if e.get("log_tail"):
        print(f"\n--- last lines of {e['log']} ---")
        for line in e["log_tail"]:
            print("  " + line)
    print(f"\nverdict: {v['verdict']}")


# --------------------------------------------------------------------------- main


def _fresh_corpus_dir(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.eml"):  # only what the generator writes
        old.unlink()
    others = [x.name for x in d.iterdir()]
    if others:
        raise SystemExit(f"error: {d} holds files other than .eml: {others[:5]}; not using it")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="maild ingest benchmark", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=2000, help="mails in the corpus (2000)")
    ap.add_argument("--seed", type=int, default=1, help="corpus seed (1)")
    ap.add_argument(
        "--workdir",
        type=Path,
        help="keep corpus, database and log here (DIR/corpus, DIR/run-*) instead of a temp dir",
    )
    ap.add_argument("--maild", help="maild executable (default: next to sys.executable, else PATH)")
    ap.add_argument("--passes", type=int, default=3, help="bare-parse passes, best counts (3)")
    ap.add_argument("--runs", type=int, default=3, help="maild ingest runs, best counts (3)")
    ap.add_argument("--timeout", type=float, default=1800, help="kill maild after N s (1800)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results ({DEFAULT_OUT})")
    args = ap.parse_args(argv)
    if args.count < 1 or args.passes < 1 or args.runs < 1:
        ap.error("--count, --passes and --runs must be >= 1")

    tmp = None
    if args.workdir:
        work = args.workdir.absolute()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="maild-bench-")
        work = Path(tmp.name)
    try:
        corpus_dir = work / "corpus"
        _fresh_corpus_dir(corpus_dir)
        stats: Counter[str] = Counter()
        print(f"generating {args.count} mails (seed {args.seed}) into {corpus_dir} ...", flush=True)
        t0 = time.perf_counter()
        paths = corpus.generate(corpus_dir, args.count, args.seed, stats=stats)
        gen_s = time.perf_counter() - t0

        exe = find_maild(args.maild)
        runs: list[dict[str, Any]] = []

        def run_once() -> None:
            if len(runs) < args.runs and all(r["status"] == "ok" for r in runs):
                run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
                runs.append(end_to_end(exe, corpus_dir, run_dir, len(paths), args.timeout))

        print(
            f"(a) parsing with mail-parser, {args.passes} passes, taking turns with "
            f"(b) {exe or 'maild'} ingest {corpus_dir}, {args.runs} runs ...",
            flush=True,
        )
        parse = bare_parse(paths, args.passes, after_pass=run_once)
        while len(runs) < args.runs and all(r["status"] == "ok" for r in runs):
            run_once()
        e2e = best_of(runs)
        db = db_rows(Path(e2e["database"])) if e2e["status"] in ("ok", "failed") else {
            "spool_by_state": None, "spool_total": None, "message_count": None, "warnings": []
        }  # fmt: skip

        report: dict[str, Any] = {
            "benchmark": "ingest",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
            "params": {
                "count": args.count,
                "seed": args.seed,
                "passes": args.passes,
                "runs": args.runs,
            },
            "targets": {"ratio_min": TARGET_RATIO, "peak_rss_mib_max": TARGET_RSS_MIB},
            "corpus": {
                "dir": str(corpus_dir) if args.workdir else None,
                "files": len(paths),
                "bytes": stats["bytes"],
                "generate_seconds": round(gen_s, 2),
                "mix": dict(sorted(stats.items())),
            },
            "parse": parse,
            "e2e": e2e,
            "db": db,
        }
        report["result"] = verdict(len(paths), parse, e2e, db)
        print_report(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"results written to {args.out}")
        if tmp is None:
            print(f"corpus, database and log kept under {work}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    v = report["result"]["verdict"]
    return 0 if v.startswith("PASS") else 1 if v == "FAIL" else 2


if __name__ == "__main__":
    sys.exit(main())
