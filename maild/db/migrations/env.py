"""Alembic environment: the engine comes from maild.db.migrate, never from an ini file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from maild.db import models  # noqa: F401  (registers the tables on Base.metadata)
from maild.db.base import Base

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several instances may start at once; only one migrates, the others wait.
            connection.execute(text("SELECT pg_advisory_xact_lock(727274)"))
        context.run_migrations()
