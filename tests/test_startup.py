"""Start-up cost: a command imports alembic and the per-command modules only when it
uses them, the quick schema check agrees with alembic's own, and what the imports built
is kept from the garbage collector."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from maild.app import App, SchemaOutOfDate
from maild.config import parse_settings
from maild.db import migrate
from tests.conftest import throwaway_pg_database


def test_head_in_files_is_alembics_head() -> None:
    assert migrate.head_in_files() is not None
    assert migrate.head_in_files() == migrate.head_revision(create_engine("sqlite://"))


def test_head_in_files_leaves_two_heads_to_alembic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(migrate.MIGRATIONS, tmp_path / "migrations")
    branch = tmp_path / "migrations" / "versions" / "9999_branch.py"
    branch.write_text("revision = '9999'\ndown_revision = '0006'\n")
    monkeypatch.setattr(migrate, "MIGRATIONS", tmp_path / "migrations")
    assert migrate.head_in_files() is None


@pytest.fixture(params=["sqlite", "postgresql"])
def old_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database one migration behind head."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        engine = create_engine(url)
        migrate.upgrade(engine, "0006")
        yield engine
        engine.dispose()
        return
    with throwaway_pg_database("maild_startup") as url:
        engine = create_engine(url)
        migrate.upgrade(engine, "0006")
        yield engine
        engine.dispose()


def test_an_old_schema_is_upgraded_on_sqlite_and_refused_on_postgresql(old_db: Engine) -> None:
    assert not migrate.at_head(old_db)
    assert not migrate.is_up_to_date(old_db)
    app = App(
        parse_settings(
            {"database": {"url": old_db.url.render_as_string(hide_password=False)}}, "<t>"
        )
    )
    try:
        if old_db.dialect.name == "sqlite":
            app.prepare_schema()
            assert migrate.current_revision(old_db) == migrate.head_in_files()
            assert migrate.at_head(old_db)
        else:
            with pytest.raises(SchemaOutOfDate):
                app.prepare_schema()
            assert migrate.current_revision(old_db) == "0006"
    finally:
        app.close()


_PROBE = """
import gc, io, json, sys
from maild.cli import main
report = {"at_import": sorted(sys.modules), "frozen": gc.get_freeze_count()}
report["code"] = main(sys.argv[1:], stdout=io.StringIO())
print(json.dumps({**report, "after": sorted(sys.modules)}))
"""


def test_start_up_of_a_command_on_a_current_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'maild.db'}"
    engine = create_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')
    argv = ["quarantine", "retry", "--all", "--config", str(config)]
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["code"] == 0
    assert not [name for name in report["after"] if name.split(".")[0] == "alembic"]
    lazy = {"maild.views", "maild.rules.cli", "maild.sla.cli", "maild.outbox.preview"}
    assert lazy.isdisjoint(report["at_import"])
    # Out of the collector's sight: it would walk all of it again at exit.
    assert report["frozen"] > 10_000
