"""The read interface: tickets and quarantine as plain dicts (for --json) and as text."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from maild.db import queries
from maild.db.models import Event, Message, SpoolEntry, Ticket
from maild.numbering import Numbering
from maild.types import SpoolState


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def ticket_summary(ticket: Ticket, numbering: Numbering, message_count: int) -> dict[str, Any]:
    assert ticket.number is not None
    return {
        "number": ticket.number,
        "tag": numbering.tag(ticket.number),
        "subject": ticket.subject,
        "status": ticket.status,
        "priority": ticket.priority,
        "queue": ticket.queue,
        "requester": ticket.requester.address,
        "created_at": _iso(ticket.created_at),
        "updated_at": _iso(ticket.updated_at),
        "message_count": message_count,
    }


def list_tickets(
    session: Session, numbering: Numbering, status: str | None = None
) -> list[dict[str, Any]]:
    query = select(Ticket).order_by(Ticket.id)
    if status:
        query = query.where(Ticket.status == status)
    tickets = list(session.scalars(query))
    counts = queries.message_counts(session, [t.id for t in tickets])
    return [ticket_summary(t, numbering, counts.get(t.id, 0)) for t in tickets]


def find_ticket(session: Session, number: str) -> Ticket | None:
    return session.scalars(select(Ticket).where(Ticket.number == number)).first()


def ticket_detail(session: Session, ticket: Ticket, numbering: Numbering) -> dict[str, Any]:
    messages = list(
        session.scalars(
            select(Message)
            .where(Message.ticket_id == ticket.id)
            .order_by(Message.id)
            .options(selectinload(Message.attachments))
        )
    )
    events = session.scalars(select(Event).where(Event.ticket_id == ticket.id).order_by(Event.id))
    detail = ticket_summary(ticket, numbering, len(messages))
    detail.update(
        {
            "team": ticket.team,
            "tier": ticket.tier,
            "assignee": ticket.assignee,
            "type": ticket.type,
            "tags": ticket.tags,
            "participants": [
                {"address": address, "name": name, "role": role}
                for address, name, role in queries.participants(session, ticket.id)
            ],
            "messages": [_message(m) for m in messages],
            "events": [
                {"at": _iso(e.at), "kind": e.kind, "actor": e.actor, "data": e.data} for e in events
            ],
        }
    )
    return detail


def export_tickets(
    session: Session, numbering: Numbering, since: datetime | None = None
) -> list[dict[str, Any]]:
    query = select(Ticket).order_by(Ticket.id)
    if since is not None:
        query = query.where(Ticket.updated_at >= since)
    return [ticket_detail(session, t, numbering) for t in session.scalars(query)]


def _message(message: Message) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "direction": message.direction,
        "kind": message.kind,
        "class": message.mail_class,
        "from": message.from_address,
        "to": message.to,
        "cc": message.cc,
        "subject": message.subject,
        "date": _iso(message.date),
        "text": message.text,
        "text_stripped": message.text_stripped,
        "attachments": [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "sha256": a.sha256,
            }
            for a in message.attachments
        ],
    }


def quarantine_item(entry: SpoolEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "state": entry.state,
        "step": entry.step,
        "reason": entry.reason,
        "received_at": _iso(entry.received_at),
        "from": entry.header_from,
        "subject": entry.header_subject,
    }


def list_quarantine(session: Session, include_ignored: bool) -> list[dict[str, Any]]:
    states = [SpoolState.QUARANTINED] + ([SpoolState.IGNORED] if include_ignored else [])
    query = select(SpoolEntry).where(SpoolEntry.state.in_(states)).order_by(SpoolEntry.id)
    return [quarantine_item(e) for e in session.scalars(query)]


def render_ticket_text(detail: dict[str, Any]) -> str:
    lines = [
        f"{detail['tag']} {detail['subject']}",
        f"status {detail['status']} · priority {detail['priority']} · "
        f"requester {detail['requester']} · {detail['message_count']} message(s)",
        f"queue {detail['queue'] or '-'} · team {detail['team'] or '-'} · "
        f"tier {detail['tier'] or '-'} · assignee {detail['assignee'] or '-'} · "
        f"tags {', '.join(detail['tags']) or '-'}",
        "participants: " + ", ".join(p["address"] for p in detail["participants"]),
        "",
    ]
    for message in detail["messages"]:
        lines.append(
            f"── {message['date'] or '?'} {message['direction']} {message['kind']}"
            f" ({message['class']}) from {message['from']}"
        )
        lines.append(f"   Subject: {message['subject']}")
        lines.extend("   " + line for line in (message["text_stripped"] or "").splitlines())
        lines.extend(
            f"   [attachment] {a['filename']} ({a['content_type']}, {a['size']} bytes)"
            for a in message["attachments"]
        )
        lines.append("")
    if detail["events"]:
        lines.append("events:")
        lines.extend(f"  {e['at']} {e['kind']} {e['data']}" for e in detail["events"])
    return "\n".join(lines)


def render_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(row.get(c) if row.get(c) is not None else "") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i][:60]) for r in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v[:60].ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([header, *body])
