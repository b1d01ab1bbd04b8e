"""A bulk `maild ingest`: the mails parsed before the database was there and those read
later all end up spooled once and filed in order, and only the last spool commit waits
for the disk."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from maild import spool
from maild.cli import main
from maild.db.models import Message, SpoolEntry
from maild.receive import bulk
from maild.receive.bulk import BulkIngest
from tests.conftest import AppFactory, bench_corpus, make_mail

# Past what is parsed before the database stack loads, and two spool batches after it.
MAILS = bulk.PARSE_WINDOW * bulk.PARSE_BATCH + bulk.SPOOL_BATCH + 5


def write_threads(folder: Path, count: int) -> list[str]:
    """`count` mails, every second one a reply to the one before; their Message-IDs."""
    folder.mkdir()
    ids = [f"<bulk-{n}@customer.example>" for n in range(count)]
    for n, message_id in enumerate(ids):
        original = ids[n - 1] if n % 2 else None
        raw = make_mail(
            sender=f"customer{n // 2}@customer.example",
            subject=f"Case {n // 2}",
            message_id=message_id,
            in_reply_to=original,
        )
        (folder / f"{n:05d}.eml").write_bytes(raw)
    return ids


def test_every_mail_is_spooled_once_and_filed_in_order(
    tmp_path: Path, make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    ids = write_threads(tmp_path / "mails", MAILS)
    durable: list[bool] = []
    put_many = spool.put_many

    def recording(*args: Any, **kwargs: Any) -> list[int]:
        durable.append(kwargs["durable"])
        return put_many(*args, **kwargs)

    monkeypatch.setattr(spool, "put_many", recording)
    ingest = BulkIngest(app.settings, [str(tmp_path / "mails")])
    ingest.start()
    out = io.StringIO()
    ingest.run(app, out)

    assert out.getvalue().strip() == f"ingest: done {MAILS}, spooled {MAILS}"
    # The mails parsed early, a full spool batch, the rest: only the last commit waits
    # for the disk.
    assert durable == [False, False, True]
    with app.db.transaction() as session:
        spooled = session.scalars(select(SpoolEntry.header_message_id).order_by(SpoolEntry.id))
        assert list(spooled) == ids
        tickets = {
            message_id: ticket_id
            for message_id, ticket_id in session.execute(
                select(Message.message_id, Message.ticket_id)
            )
        }
    assert len(tickets) == MAILS
    for n in range(1, MAILS, 2):
        assert tickets[ids[n]] == tickets[ids[n - 1]], ids[n]
    assert len(set(tickets.values())) == (MAILS + 1) // 2


def test_the_command_loads_the_database_stack_after_forking_the_parser() -> None:
    probe = "import sys, maild.cli, json; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not [name for name in loaded if name.split(".")[0] in ("sqlalchemy", "alembic")]
    assert "maild.pipeline.parse" in loaded


def conversations(config: Path) -> set[frozenset[str]]:
    """The Message-IDs of each ticket."""
    out = io.StringIO()
    assert main(["tickets", "export", "--config", str(config)], out) == 0
    tickets = [json.loads(line) for line in out.getvalue().splitlines()]
    return {frozenset(m["message_id"] for m in ticket["messages"]) for ticket in tickets}


def test_the_conversations_do_not_depend_on_the_order_the_mails_come_in(tmp_path: Path) -> None:
    """The generated corpus (replies in every client style, tags, quoted history,
    auto-replies and bounces) filed first to last and last to first: the same
    conversations. Backwards, each auto-reply comes before the mail it answers: it is
    filed again at the end of the import, and joins it then."""
    paths = bench_corpus(tmp_path / "corpus", 300)
    backwards = tmp_path / "backwards"
    backwards.mkdir()
    for n, path in enumerate(reversed(paths)):
        (backwards / f"{n:05d}.eml").write_bytes(path.read_bytes())

    found = []
    for name, folder in (("forwards", tmp_path / "corpus"), ("backwards", backwards)):
        config = tmp_path / f"{name}.toml"
        config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / name}.db"\n')
        assert main(["ingest", "--config", str(config), str(folder)], io.StringIO()) == 0
        found.append(conversations(config))
    assert len(found[0]) > 100
    assert found[1] == found[0]
