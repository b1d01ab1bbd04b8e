"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from maild.app import App
from maild.config import Settings
from maild.db import migrate
from maild.db.models import Base
from maild.db.session import Database
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


def test_0009_indexes_the_ids_every_received_message_names(empty_db: Engine) -> None:
    migrate.upgrade(empty_db, "0008")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with empty_db.begin() as connection:
        connection.execute(
            text("INSERT INTO contact (id, address, name, created_at) VALUES (1, 'a@x', '', :at)"),
            {"at": at},
        )
        connection.execute(
            text(
                "INSERT INTO ticket (id, subject, status, priority, tags, requester_id,"
                " created_at, updated_at) VALUES (1, 's', 'new', 'normal', '[]', 1, :at, :at)"
            ),
            {"at": at},
        )
        for n, (in_reply_to, references) in enumerate(
            [("[]", "[]"), ('["<p@x>"]', '["<a@x>", "<b@x>"]'), ("[]", '["<a@x>", "<b@x>"]')]
        ):
            connection.execute(
                text(
                    "INSERT INTO message (ticket_id, direction, kind, mail_class, message_id,"
                    ' body_hash, in_reply_to, "references", from_name, "to", cc, subject,'
                    " text, text_stripped, created_at) VALUES (1, 'in', 'customer', 'human',"
                    " :mid, 'h', :irt, :refs, '', '[]', '[]', 's', '', '', :at)"
                ),
                {"mid": f"<m{n}@x>", "irt": in_reply_to, "refs": references, "at": at},
            )
    migrate.upgrade(empty_db)
    with empty_db.connect() as connection:
        refs = connection.execute(
            text("SELECT message_id, ref FROM message_ref ORDER BY message_id, ref")
        ).all()
    assert [tuple(row) for row in refs] == [
        (2, "<a@x>"),
        (2, "<b@x>"),
        (2, "<p@x>"),
        (3, "<a@x>"),
        (3, "<b@x>"),
    ]


def _schema(engine: Engine) -> dict[str, Any]:
    """Everything the reflection sees of each table, in a comparable form."""
    found = inspect(engine)
    return {
        table: {
            # Sorted: a column a migration added comes last, and order means nothing here.
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in found.get_columns(table)
            ),
            "primary_key": found.get_pk_constraint(table)["constrained_columns"],
            "foreign_keys": sorted(
                (tuple(fk["constrained_columns"]), fk["referred_table"])
                for fk in found.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in found.get_indexes(table)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(table)),
        }
        for table in sorted(found.get_table_names())
    }


def test_a_new_database_made_in_one_go_equals_a_migrated_one(tmp_path: Path) -> None:
    migrated = create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    migrate.upgrade(migrated)
    fresh = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    with fresh.begin() as connection:
        assert migrate.create_fresh(connection)

    assert _schema(fresh.engine) == _schema(migrated)
    # Alembic reads the stamp as its own: nothing to upgrade, and upgrading changes nothing.
    assert migrate.current_revision(fresh.engine) == migrate.head_revision(fresh.engine)
    migrate.upgrade(fresh.engine)
    assert _schema(fresh.engine) == _schema(migrated)
    with fresh.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_server_default": True})
        assert compare_metadata(context, Base.metadata) == []
    migrated.dispose()
    fresh.dispose()


def test_only_a_database_without_tables_is_made_in_one_go(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    migrate.upgrade(db.engine, "0006")
    with db.begin() as connection:
        assert not migrate.create_fresh(connection)
    assert migrate.current_revision(db.engine) == "0006"
    # Starting maild on it migrates the rest of the way.
    app = App(Settings())
    app.db.dispose()
    app.db = db
    app.prepare_schema()
    assert migrate.at_head(db.engine)
    db.dispose()
