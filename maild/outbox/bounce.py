"""Bounces (DSNs) of our own mails: find the original's Message-ID, note it on its ticket.

A DSN (RFC 3464) carries the original as a message/rfc822 part, or only its headers as
text/rfc822-headers; older MTAs quote it in the text. The Message-ID found there is
matched against the outbox, whose rows keep the Message-ID of every mail we sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from maild import spool
from maild.outbox.tables import BOUNCING, OUTBOX
from maild.pipeline.apply import EventRow, record_events

_ORIGINAL_PARTS = {"message/rfc822", "text/rfc822-headers", "message/rfc822-headers"}
_QUOTED_ID = re.compile(rb"^\s*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Report:
    """What the DSN says about the failed delivery (RFC 3464 fields, when present)."""

    original_message_ids: tuple[str, ...]
    recipient: str | None
    status: str | None
    diagnostic: str | None
    action: str | None = None

    @property
    def delayed(self) -> bool:
        """A delay notice (RFC 3464 `Action: delayed`, or a 4.x.x status): the MTA is
        still trying, so the address is not dead."""
        return (self.action or "").lower() == "delayed" or (self.status or "").startswith("4")


def read_report(raw: bytes) -> Report:
    """Pure: the original Message-IDs and the per-recipient status of a bounce."""
    message = message_from_bytes(raw, policy=compat32)
    ids: list[str] = []
    recipient = status = diagnostic = action = None
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type in _ORIGINAL_PARTS:
            ids += _original_ids(part)
        elif content_type == "message/delivery-status":
            for block in _blocks(part):
                recipient = recipient or _address(block.get("Final-Recipient"))
                recipient = recipient or _address(block.get("Original-Recipient"))
                status = status or _clean(block.get("Status"))
                diagnostic = diagnostic or _clean(block.get("Diagnostic-Code"))
                action = action or _clean(block.get("Action"))
    if not ids:
        # No structured original: a quoted header block in the text (qmail, Exim, old Sendmail).
        # The first Message-ID header is the DSN's own; the quoted one comes after.
        ids = [m.decode("ascii", "replace") for m in _QUOTED_ID.findall(raw)][1:]
    return Report(tuple(dict.fromkeys(ids)), recipient, status, diagnostic, action)


def _original_ids(part: Message) -> list[str]:
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822, parsed: one inner message
        inner = [m for m in payload if isinstance(m, Message)]
        return [str(m["Message-ID"]).strip() for m in inner if m["Message-ID"]]
    text = payload if isinstance(payload, str) else ""
    headers = HeaderParser(policy=compat32).parsestr(text)
    return [str(headers["Message-ID"]).strip()] if headers["Message-ID"] else []


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    return [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []


def _address(value: object) -> str | None:
    """`rfc822; alice@example.org` -> `alice@example.org`."""
    if value is None:
        return None
    text = str(value).rpartition(";")[2].strip().strip("<>").lower()
    return text or None


def _clean(value: object) -> str | None:
    if value is None:
        return None
    return " ".join(str(value).split()) or None


def record_bounce(
    conn: Connection, spool_id: int, now: datetime, suppress_for: float
) -> str | None:
    """If the spooled bounce is about a mail in our outbox, put an event on its ticket
    and say so (the reason the spool row is kept as ignored); None when it is about no
    mail of ours. A failure marks the row bounced and the address bouncing for
    `suppress_for` seconds; a delay notice changes nothing but the ticket's history."""
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
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = {"until": until, "reason": reason[:2000], "updated_at": now}
    conn.execute(
        dialect.insert(BOUNCING)
        .values(address=address.lower(), **values)
        .on_conflict_do_update(index_elements=[BOUNCING.c.address], set_=values)
    )
