"""Queue automatic replies: decide, compose, and write the outbox and message rows.

Runs inside the transaction that stored the customer's mail (the caller's connection),
so the acknowledgement exists exactly when the ticket change that caused it does.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import Connection, case, func, insert, select

from maild.config import Settings
from maild.logs import event
from maild.numbering import Numbering
from maild.outbox.compose import compose_reply, new_message_id, sending_address
from maild.outbox.guard import Guard, RecentMail
from maild.outbox.tables import MESSAGE, OUTBOX
from maild.pipeline.apply import EventRow, record_events
from maild.rules import RouteDecision
from maild.templating import TemplateMissing, Templates
from maild.types import Direction, Envelope, MailClass, MessageKind, ParsedMail

DEFAULT_ACKNOWLEDGEMENT = "requester/ticket_created"
_OUTBOX = OUTBOX
_MESSAGE = MESSAGE
log = logging.getLogger("maild.outbox")


class Acknowledger:
    """Built once per settings (templates and patterns load here); `queue` per mail."""

    def __init__(self, settings: Settings, numbering: Numbering) -> None:
        self._settings = settings
        self._numbering = numbering
        self._templates = Templates(settings.paths.templates, settings.outbound.language)
        self._guard = Guard(settings.outbound, settings.is_support_address)

    def queue(
        self,
        conn: Connection,
        *,
        ticket_id: int,
        number: str,
        created_ticket: bool,
        mail: ParsedMail,
        mail_class: MailClass,
        envelope: Envelope,
        requester: tuple[str, str],
        route: RouteDecision,
        now: datetime,
    ) -> int | None:
        """Queue the automatic reply the rules (or the default) ask for; the outbox row id,
        or None when none is due or it was suppressed (recorded as an event)."""
        template = _template(route, created_ticket)
        if template is None or not self._settings.outbound.enabled:
            return None
        recipient = requester[0] or (mail.from_.address if mail.from_ else "")
        refusal = self._guard.refusal(
            mail, mail_class, envelope, recipient, _recent(conn, recipient, now)
        )
        if refusal is not None:
            record_events(
                conn,
                [
                    EventRow(
                        ticket_id,
                        "auto_reply_suppressed",
                        {"template": template, "recipient": recipient, "reason": refusal},
                    )
                ],
                now,
            )
            return None
        sender = sending_address(self._settings, envelope)
        domain = self._settings.outbound.message_id_domain or sender.rpartition("@")[2]
        context = _context(mail, number, self._numbering.tag(number), requester, sender)
        try:
            rendered = self._templates.render(template, context, _language(mail))
        except (TemplateError, TemplateMissing) as exc:
            # A broken operator template must not cost the customer's mail its ticket:
            # the ticket says the acknowledgement was not sent, and why.
            problem = f"template {template}: {exc}"
            event(log, "auto reply not composed", logging.ERROR, ticket=number, reason=problem)
            record_events(
                conn, [EventRow(ticket_id, "auto_reply_failed", {"reason": problem})], now
            )
            return None
        composed = compose_reply(
            rendered,
            subject=self._numbering.with_tag(rendered.subject, number),
            sender=sender,
            recipient=(recipient, requester[1] if requester[0] else ""),
            parent_message_id=mail.message_id,
            parent_references=mail.references,
            message_id=new_message_id(domain),
            instance_id=self._settings.outbound.instance_id,
            now=now,
        )
        # Recorded on the ticket under its Message-ID: a reply carrying only In-Reply-To
        # threads by rule 1.
        message_row_id = conn.execute(
            insert(_MESSAGE).returning(_MESSAGE.c.id),
            {
                "ticket_id": ticket_id,
                "spool_id": None,
                "direction": Direction.OUT,
                "kind": MessageKind.AUTO_REPLY,
                "mail_class": MailClass.AUTO_REPLY,
                "message_id": composed.message_id,
                "body_hash": hashlib.sha256(composed.raw).hexdigest(),
                "in_reply_to": list(composed.in_reply_to),
                "references": list(composed.references),
                "from_address": sender,
                "from_name": "",
                "to": [recipient],
                "cc": [],
                "subject": composed.subject,
                "date": now,
                "text": composed.text,
                "text_stripped": composed.text,
                "html": composed.html,
                "created_at": now,
            },
        ).scalar_one()
        outbox_id: int = conn.execute(
            insert(_OUTBOX).returning(_OUTBOX.c.id),
            {
                "ticket_id": ticket_id,
                "message_row_id": message_row_id,
                "kind": MessageKind.AUTO_REPLY,
                "template": template,
                "mail_from": sender,
                "recipient": recipient,
                "message_id": composed.message_id,
                "raw": composed.raw,
                "state": "pending",
                "attempts": 0,
                "created_at": now,
                "next_attempt_at": now,
                "expires_at": now + timedelta(seconds=self._settings.outbound.max_age),
            },
        ).scalar_one()
        record_events(
            conn,
            [
                EventRow(
                    ticket_id,
                    "auto_reply_queued",
                    {
                        "template": template,
                        "language": rendered.language,
                        "recipient": recipient,
                        "outbox_id": outbox_id,
                        "message_id": composed.message_id,
                    },
                )
            ],
            now,
        )
        return outbox_id


def _template(route: RouteDecision, created_ticket: bool) -> str | None:
    """The rules' choice (AutoReply(None) means none); else the default for new tickets."""
    if route.auto_reply is not None:
        return route.auto_reply.template
    return DEFAULT_ACKNOWLEDGEMENT if created_ticket else None


def _language(mail: ParsedMail) -> str | None:
    """The customer's language when the mail states it (`Content-Language: hu`)."""
    value = (mail.header("content-language") or "").strip().lower()
    primary = value.split(",")[0].split("-")[0].strip()
    return primary if primary.isalpha() and 2 <= len(primary) <= 3 else None


def _recent(conn: Connection, recipient: str, now: datetime) -> RecentMail:
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    row = conn.execute(
        select(
            func.count(case((_OUTBOX.c.created_at > hour_ago, 1))),
            func.count(),
        ).where(
            _OUTBOX.c.recipient == recipient,
            _OUTBOX.c.kind == MessageKind.AUTO_REPLY,
            _OUTBOX.c.created_at > day_ago,
        )
    ).one()
    return RecentMail(last_hour=int(row[0]), last_day=int(row[1]))


def _context(
    mail: ParsedMail, number: str, tag: str, requester: tuple[str, str], sender: str
) -> dict[str, Any]:
    """The variables documented in templates/README.md."""
    return {
        "ticket": {"number": number, "tag": tag, "subject": mail.subject or "(no subject)"},
        "requester": {"address": requester[0], "name": requester[1]},
        "message": {
            "subject": mail.subject,
            "text": mail.text,
            "message_id": mail.message_id,
            "date": format_datetime(mail.date) if mail.date else "",
        },
        "support_address": sender,
    }
