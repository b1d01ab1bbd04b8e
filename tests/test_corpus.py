"""Real-world mail through `maild ingest`: every file ends in a ticket, quarantine or ignored.

Sources: ../shared/corpus-dev (third-party test mail of help desks, mail libraries and bounce
parsers) and CPython's test/test_email/data. Files are read where they lie, never copied.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from sqlalchemy import create_engine, text

from maild.cli import EX_OK, main
from maild.receive.ingest import read_inputs
from tests.conftest import CORPUS_DEV, need, need_corpus

# Not mails: expected results and documentation beside the mails.
_NOT_MAIL_SUFFIXES = {".yml", ".tsv"}
_NOT_MAIL_NAMES = {"SOURCE.txt", "README.txt", "MANIFEST.tsv", "LICENSE", "LICENSE.txt"}


def _cpython_email_data() -> Path | None:
    try:
        import test.test_email as package  # the stdlib's own test data, if installed
    except ImportError:
        return None
    folder = Path(package.__file__).parent / "data"
    return folder if folder.is_dir() else None


def corpus_files() -> list[Path]:
    files: list[Path] = []
    if CORPUS_DEV.is_dir():
        files += [
            p
            for p in sorted(CORPUS_DEV.rglob("*"))
            if p.is_file()
            and p.suffix not in _NOT_MAIL_SUFFIXES
            and p.name not in _NOT_MAIL_NAMES
            and not p.name.startswith("LICENSE")
            and not p.name.startswith("COPYING")
        ]
    cpython = _cpython_email_data()
    if cpython is not None:
        files += sorted(p for p in cpython.iterdir() if p.is_file())
    return files


def test_every_real_world_mail_has_an_outcome(tmp_path: Path, db_url: str) -> None:
    need_corpus(CORPUS_DEV)
    need(_cpython_email_data() is not None, "CPython's test/test_email/data is not installed")
    files = corpus_files()
    distinct = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    # Each path separately: an mbox-looking file may hold several mails.
    folder = tmp_path / "in"
    folder.mkdir()
    for index, path in enumerate(files):
        (folder / f"{index:04d}-{path.name}").write_bytes(path.read_bytes())
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[logging]\nlevel = "ERROR"\n')

    out = io.StringIO()
    assert main(["ingest", "--config", str(config), str(folder)], stdout=out) == EX_OK

    engine = create_engine(db_url)
    with engine.connect() as connection:
        states = dict(
            connection.execute(text("SELECT state, count(*) FROM spool GROUP BY state")).all()
        )
        messages = connection.execute(text("SELECT count(*) FROM message")).scalar_one()
        unexplained = connection.execute(
            text(
                "SELECT count(*) FROM spool WHERE state IN ('quarantined', 'ignored') "
                "AND (reason IS NULL OR reason = '' OR step IS NULL)"
            )
        ).scalar_one()
    engine.dispose()
    spooled = sum(states.values())
    # An mbox file holds several mails; everything read must be spooled.
    assert spooled == sum(1 for _ in read_inputs([str(folder)]))
    assert states.get("pending", 0) == 0
    assert unexplained == 0
    # Every spooled mail is exactly one of: a message, quarantined, ignored.
    assert messages == states.get("done", 0)
    assert messages + states.get("quarantined", 0) + states.get("ignored", 0) == spooled
    assert spooled >= len(distinct)
    # Real mail must mostly make tickets; the reply-parser folders hold bare bodies (no
    # headers at all), which rightly go to quarantine.
    bodies_only = sum(1 for p in files if p.parent.name.startswith("reply-"))
    assert states.get("done", 0) > 0.6 * (spooled - bodies_only), states

    listing = io.StringIO()
    main(["quarantine", "list", "--config", str(config), "--json"], stdout=listing)
    for item in json.loads(listing.getvalue()):
        assert item["step"] and item["reason"]
