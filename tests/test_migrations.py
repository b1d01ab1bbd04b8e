"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, text

from maild.app import App
from maild.db import migrate
from maild.db.models import Base
from tests.conftest import throwaway_pg_database


def test_migrated_schema_matches_models(app: App) -> None:
    assert migrate.is_up_to_date(app.db.engine)
    with app.db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent(app: App) -> None:
    migrate.upgrade(app.db.engine)
    assert migrate.current_revision(app.db.engine) == migrate.head_revision(app.db.engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database with no schema yet (a fresh one per test on PostgreSQL too)."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
        yield engine
        engine.dispose()
        return
    with throwaway_pg_database("maild_migration") as url:
        engine = create_engine(url)
        yield engine
        engine.dispose()


def test_0007_moves_spooled_bytes_to_their_own_table_and_back(empty_db: Engine) -> None:
    migrate.upgrade(empty_db, "0006")
    raw = b"From: a@customer.example\r\n\r\n\xff\x00 bytes as received\r\n"
    with empty_db.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO spool (received_at, source, envelope, raw, size, state, attempts)"
                " VALUES (:at, 'test', '{}', :raw, :size, 'pending', 0)"
            ),
            {"at": datetime(2026, 1, 1, tzinfo=UTC), "raw": raw, "size": len(raw)},
        )
    migrate.upgrade(empty_db)
    with empty_db.connect() as connection:
        assert connection.execute(text("SELECT spool_id, raw FROM spool_raw")).all() == [(1, raw)]
    command.downgrade(migrate._config(empty_db), "0006")
    with empty_db.connect() as connection:
        assert connection.execute(text("SELECT id, raw FROM spool")).all() == [(1, raw)]
