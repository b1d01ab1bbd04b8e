"""Bounces (DSNs) of our own mails: the original's Message-ID (read by outbox/dsn.py) is
matched against the outbox, whose rows keep the Message-ID of every mail we sent, and
the bounce is noted on its ticket.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, select, update

from maild import spool
from maild.db.dialects import dialect_insert
from maild.outbox.dsn import read_report
from maild.outbox.tables import BOUNCING, OUTBOX
from maild.pipeline.apply import EventRow, record_events
from maild.types import BounceReport


def record_bounce(
    conn: Connection,
    spool_id: int,
    now: datetime,
    suppress_for: float,
    report: BounceReport | None = None,
) -> str | None:
    """If the spooled bounce is about a mail in our outbox, put an event on its ticket
    and say so (the reason the spool row is kept as ignored); None when it is about no
    mail of ours. A failure marks the row bounced and the address bouncing for
    `suppress_for` seconds; a delay notice changes nothing but the ticket's history.
    `report`: read already when the mail was parsed (an RFC 3464 report is); otherwise
    it is read here from the spooled bytes."""
    if report is None:
        raw = spool.raw_of(conn, spool_id)
        if raw is None:
            return None
        report = read_report(bytes(raw))
    if not report.original_message_ids:
        return None
    row = conn.execute(
        select(OUTBOX.c.id, OUTBOX.c.ticket_id, OUTBOX.c.recipient, OUTBOX.c.message_id)
        .where(OUTBOX.c.message_id.in_(report.original_message_ids))
        .order_by(OUTBOX.c.id)
        .limit(1)
    ).first()
    if row is None:
        return None
    error = " ".join(filter(None, [report.status, report.diagnostic])) or "bounced"
    recipient = report.recipient or row.recipient
    if not report.delayed:
        conn.execute(
            update(OUTBOX).where(OUTBOX.c.id == row.id).values(state="bounced", last_error=error)
        )
        mark_bouncing(conn, recipient, error, now + timedelta(seconds=suppress_for), now)
    if row.ticket_id is not None:
        data = {
            "outbox_id": row.id,
            "message_id": row.message_id,
            "recipient": recipient,
            "status": report.status,
            "diagnostic": report.diagnostic,
            "spool_id": spool_id,
        }
        kind = "outbound_delayed" if report.delayed else "outbound_bounced"
        record_events(conn, [EventRow(row.ticket_id, kind, data)], now)
    what = "delay notice" if report.delayed else "bounce"
    return f"{what} of our mail {row.message_id} (outbox {row.id}): {error}"


def mark_bouncing(
    conn: Connection, address: str, reason: str, until: datetime, now: datetime
) -> None:
    """No automatic mail to `address` before `until` (a later bounce extends it)."""
    values = {"until": until, "reason": reason[:2000], "updated_at": now}
    conn.execute(
        dialect_insert(conn.dialect.name, BOUNCING)
        .values(address=address.lower(), **values)
        .on_conflict_do_update(index_elements=[BOUNCING.c.address], set_=values)
    )
