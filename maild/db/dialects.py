"""INSERT … ON CONFLICT, which SQLAlchemy spells once per dialect."""

from __future__ import annotations

import importlib
from typing import Any

from sqlalchemy import Table


def dialect_insert(dialect_name: str, table: Table) -> Any:
    """The dialect's own `insert(table)`, the one with `on_conflict_do_nothing` and
    `on_conflict_do_update`. Its module is imported on first use: the PostgreSQL dialect
    alone takes some 30 ms to import, which every `maild ingest` on SQLite would pay."""
    module = importlib.import_module(f"sqlalchemy.dialects.{dialect_name}")
    return module.insert(table)
