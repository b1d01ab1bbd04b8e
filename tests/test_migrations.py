"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from maild.app import App
from maild.db import migrate
from maild.db.models import Base


def test_migrated_schema_matches_models(app: App) -> None:
    assert migrate.is_up_to_date(app.db.engine)
    with app.db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent(app: App) -> None:
    migrate.upgrade(app.db.engine)
    assert migrate.current_revision(app.db.engine) == migrate.head_revision(app.db.engine)
