"""The Core tables the outbox writes (the hot path uses statements, not the ORM)."""

from __future__ import annotations

from sqlalchemy import Table

from maild.db.base import Base
from maild.db.models import BouncingAddress, Message, Outbox


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


OUTBOX = _table(Outbox)
MESSAGE = _table(Message)
BOUNCING = _table(BouncingAddress)
