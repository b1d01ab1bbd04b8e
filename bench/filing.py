"""Filing cost per mail in CPU instructions: a measure that does not move with the machine.

    python bench/filing.py [--count 300] [--seed 1] [--workdir DIR] [--pythonpath DIR]

On a shared 2-CPU VM the wall-clock benchmarks (ingest.py, smtp.py) swing by a tenth
from one minute to the next, which hides any change smaller than that. This one counts
the instructions the filing step executes, under valgrind's cachegrind, so two versions
of maild can be compared exactly (`--pythonpath` points at another checkout's root):

1. generates the deterministic corpus (bench/corpus.py, 2000 mails, as ingest.py) into a
   temp dir (or DIR/corpus), parses its first `count` + 20 mails with maild's parse step
   and pickles the results;
2. runs itself twice under `valgrind --tool=cachegrind --cache-sim=no`: each run builds
   an App on a fresh SQLite file, spools the mails and files the first 20 (statements
   compile, caches fill), then files `count` more (second run) or none (first run);
3. prints (instructions of the second run - of the first) / count.

What is counted is user-space work: maild, SQLAlchemy, the sqlite3 library, the
interpreter. Not counted: time in the kernel (the write-ahead log's writes and fsyncs)
and waiting. Runs of one version differ by a few thousand instructions in all.
Imports maild; needs valgrind (`apt-get install valgrind`; exit status 2 without it).
Takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

WARM_UP = 20


def prepare(corpus_dir: Path, count: int, seed: int, out: Path) -> None:
    from maild.config import load_settings
    from maild.pipeline.limits import MailLimits
    from maild.pipeline.parse import parse_or_error

    paths = sorted(corpus_dir.glob("*.eml"))
    if len(paths) < count + WARM_UP:
        paths = corpus.generate(corpus_dir, count=max(2000, count + WARM_UP), seed=seed)
    limits = MailLimits.of(load_settings(None).mail)
    mails = []
    for path in paths[: count + WARM_UP]:
        raw = path.read_bytes()
        mails.append((raw, parse_or_error(raw, limits)))
    out.write_bytes(pickle.dumps(mails))


def file_mails(parsed: Path, count: int, workdir: Path) -> None:
    """The measured run: spool everything, file WARM_UP + `count` mails, as `maild ingest`
    does (over one connection, handing over the spool row it wrote). Older versions
    without those are run the way they filed."""
    import contextlib
    import inspect
    import logging

    from maild import spool
    from maild.app import App
    from maild.config import parse_settings
    from maild.types import Envelope

    database = workdir / f"filing-{os.getpid()}.db"
    settings = parse_settings({"database": {"url": f"sqlite:///{database}"}}, "<bench>")
    mails = pickle.loads(parsed.read_bytes())
    app = App(settings)
    app.prepare_schema()
    _ = app.rules
    logging.getLogger("maild").setLevel(logging.WARNING)
    now = app.clock.now()
    envelope = Envelope()
    ids = spool.put_many(app.db, [(raw, envelope) for raw, _ in mails], "bench", now)
    hands_over_row = "entry" in inspect.signature(app.processor.process).parameters
    pinned = getattr(app.processor, "pinned", contextlib.nullcontext)
    with pinned():
        for spool_id, (_, mail) in list(zip(ids, mails, strict=True))[: WARM_UP + count]:
            if hands_over_row:
                row = spool.Claimed(spool_id, envelope, None, now)
                app.processor.process(spool_id, mail, row)
            else:
                app.processor.process(spool_id, mail)
    app.close()


def run_self(args: list[str], workdir: Path, pythonpath: str | None, under: list[str]) -> str:
    """This script with `args`, in `workdir` (so no rules/ is found, as in a fresh
    directory), importing maild from `pythonpath` if given; returns its stderr."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [*under, sys.executable, str(Path(__file__).resolve()), *args]
    done = subprocess.run(
        command, env=env, cwd=workdir, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.stderr


def instructions(parsed: Path, count: int, workdir: Path, pythonpath: str | None) -> int:
    valgrind = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
    ]
    args = ["--inner", str(parsed), "--count", str(count), "--workdir", str(workdir)]
    stderr = run_self(args, workdir, pythonpath, valgrind)
    found = re.search(r"I\s+refs:\s+([\d,]+)", stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="keep the corpus in DIR/corpus")
    parser.add_argument("--pythonpath", help="import maild from this checkout's root")
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner is not None:
        file_mails(args.inner, args.count, args.workdir)
        return 0
    if args.prepare is not None:
        prepare(args.workdir, args.count, args.seed, args.prepare)
        return 0
    if shutil.which("valgrind") is None:
        print("bench/filing.py needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        corpus_dir = (args.workdir or work) / "corpus"
        corpus_dir.mkdir(parents=True, exist_ok=True)
        parsed = work / "parsed.pickle"
        # Parsed by the maild that files them: the pickles name its classes.
        prepare_args = ["--prepare", str(parsed), "--count", str(args.count)]
        prepare_args += ["--seed", str(args.seed), "--workdir", str(corpus_dir)]
        run_self(prepare_args, work, args.pythonpath, [])
        without = instructions(parsed, 0, work, args.pythonpath)
        with_count = instructions(parsed, args.count, work, args.pythonpath)
    per_mail = (with_count - without) / args.count
    print(f"filing: {per_mail / 1e6:.3f} M instructions per mail ({args.count} mails)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
