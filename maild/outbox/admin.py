"""What `maild outbox list|retry` reads and changes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from maild.db.models import Outbox, Ticket


def list_rows(session: Session, state: str | None = None) -> list[dict[str, Any]]:
    """Outbox rows, oldest first, as plain JSON-ready data (no mail bytes)."""
    query = (
        select(Outbox, Ticket.number)
        .outerjoin(Ticket, Ticket.id == Outbox.ticket_id)
        .order_by(Outbox.id)
    )
    if state is not None:
        query = query.where(Outbox.state == state)
    return [
        {
            "id": row.id,
            "state": row.state,
            "ticket": number,
            "kind": row.kind,
            "template": row.template,
            "recipient": row.recipient,
            "message_id": row.message_id,
            "attempts": row.attempts,
            "created_at": row.created_at.isoformat(),
            "next_attempt_at": row.next_attempt_at.isoformat() if row.state == "pending" else None,
            "sent_at": row.sent_at.isoformat() if row.sent_at else None,
            "last_error": row.last_error,
        }
        for row, number in session.execute(query).all()
    ]


def retry(session: Session, outbox_id: int, now: datetime, max_age: float) -> bool:
    """Make a failed (or waiting) row due now, with a fresh age; False if there is none
    such. A sent row is never sent again."""
    result = session.execute(
        update(Outbox)
        .where(Outbox.id == outbox_id, Outbox.state.in_(("failed", "pending")))
        .values(state="pending", next_attempt_at=now, expires_at=now + timedelta(seconds=max_age))
    )
    return bool(getattr(result, "rowcount", 0))
