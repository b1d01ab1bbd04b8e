"""Queue automatic replies: decide, compose, and write the outbox and message rows.

Runs inside the transaction that stored the customer's mail (the caller's connection),
so the acknowledgement exists exactly when the ticket change that caused it does.
`enqueue` and `recent` are the building blocks for any other mail maild sends on its
own (agent notifications, SLA reminders): compose, check `Guard.limit`, enqueue.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, case, func, insert, select

from maild.config import Settings
from maild.logs import event
from maild.numbering import Numbering
from maild.outbox.compose import Composed, compose_reply, new_message_id, sending_address
from maild.outbox.context import mail_context, ticket_context
from maild.outbox.guard import Guard, RecentMail, RefusalCode
from maild.outbox.tables import BOUNCING, MESSAGE, OUTBOX
from maild.pipeline.apply import EventRow, record_events
from maild.rules import RouteDecision
from maild.templating import TemplateError, TemplateMissing, Templates
from maild.types import Direction, Envelope, MailClass, MessageKind, ParsedMail

DEFAULT_ACKNOWLEDGEMENT = "requester/ticket_created"
# Kinds of outbox rows that count against the rate limits: mail nobody wrote by hand.
AUTOMATIC_KINDS = (MessageKind.AUTO_REPLY, MessageKind.SYSTEM)
_OUTBOX = OUTBOX
_MESSAGE = MESSAGE
log = logging.getLogger("maild.outbox")


@dataclass(frozen=True, slots=True)
class Queued:
    """What `Acknowledger.queue` did: the outbox row, or the rule that suppressed it."""

    outbox_id: int | None = None
    suppressed: RefusalCode | None = None


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
    ) -> Queued:
        """Queue the automatic reply the rules (or the default) ask for: the outbox row,
        or nothing when none is due, or the suppression (also recorded as an event)."""
        template = _template(route, created_ticket)
        if template is None or not self._settings.outbound.enabled:
            return Queued()
        recipient = requester[0] or (mail.from_.address if mail.from_ else "")
        refusal = self._guard.refusal(
            mail, mail_class, envelope, recipient, recent(conn, recipient, ticket_id, now), now
        )
        if refusal is not None:
            record_events(
                conn,
                [
                    EventRow(
                        ticket_id,
                        "auto_reply_suppressed",
                        {
                            "template": template,
                            "recipient": recipient,
                            "rule": refusal.code,
                            "reason": refusal.reason,
                        },
                    )
                ],
                now,
            )
            event(log, "auto reply suppressed", ticket=number, rule=refusal.code)
            return Queued(suppressed=refusal.code)
        sender = sending_address(self._settings, envelope)
        domain = self._settings.outbound.message_id_domain or sender.rpartition("@")[2]
        context = {
            **ticket_context(conn, ticket_id, self._numbering),
            "message": mail_context(mail),
            "support_address": sender,
        }
        # A follow-up has no requester of its own (""): the ticket's is the one answered.
        if requester[0]:
            context["requester"] = {"address": requester[0], "name": requester[1]}
        try:
            # The customer's stated language, else the rule's, else the configured one.
            chosen = route.auto_reply.language if route.auto_reply is not None else None
            rendered = self._templates.render(template, context, _language(mail) or chosen)
        except (TemplateError, TemplateMissing) as exc:
            # A broken operator template must not cost the customer's mail its ticket:
            # the ticket says the acknowledgement was not sent, and why.
            problem = f"template {template}: {exc}"
            event(log, "auto reply not composed", logging.ERROR, ticket=number, reason=problem)
            record_events(
                conn, [EventRow(ticket_id, "auto_reply_failed", {"reason": problem})], now
            )
            return Queued()
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
        outbox_id = enqueue(
            conn,
            composed,
            ticket_id=ticket_id,
            kind=MessageKind.AUTO_REPLY,
            template=template,
            max_age=self._settings.outbound.max_age,
            now=now,
        )
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
        return Queued(outbox_id=outbox_id)


def enqueue(
    conn: Connection,
    composed: Composed,
    *,
    ticket_id: int | None,
    kind: MessageKind,
    template: str | None,
    max_age: float,
    now: datetime,
) -> int:
    """Record `composed` on its ticket (a message row under its Message-ID, so a reply
    carrying only In-Reply-To threads by rule 1) and queue it; the outbox row id.
    Writes in the caller's transaction: the mail exists exactly when its cause does."""
    message_row_id = None
    if ticket_id is not None:
        automatic = kind in AUTOMATIC_KINDS
        message_row_id = conn.execute(
            insert(_MESSAGE).returning(_MESSAGE.c.id),
            {
                "ticket_id": ticket_id,
                "spool_id": None,
                "direction": Direction.OUT,
                "kind": kind,
                "mail_class": MailClass.AUTO_REPLY if automatic else MailClass.HUMAN,
                "message_id": composed.message_id,
                "body_hash": hashlib.sha256(composed.raw).hexdigest(),
                "in_reply_to": list(composed.in_reply_to),
                "references": list(composed.references),
                "from_address": composed.mail_from,
                "from_name": "",
                "to": [composed.recipient],
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
            "kind": kind,
            "template": template,
            "mail_from": composed.mail_from,
            "recipient": composed.recipient,
            "message_id": composed.message_id,
            "raw": composed.raw,
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
            "expires_at": now + timedelta(seconds=max_age),
        },
    ).scalar_one()
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


def recent(conn: Connection, recipient: str, ticket_id: int | None, now: datetime) -> RecentMail:
    """Automatic mail already queued to `recipient` and on the ticket, and whether the
    recipient is bouncing: what `Guard` needs to decide."""
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    row = conn.execute(
        select(
            func.count(case((_OUTBOX.c.created_at > hour_ago, 1))),
            func.count(),
        ).where(
            _OUTBOX.c.recipient == recipient,
            _OUTBOX.c.kind.in_(AUTOMATIC_KINDS),
            _OUTBOX.c.created_at > day_ago,
        )
    ).one()
    on_ticket = 0
    if ticket_id is not None:
        # Only replies to the outside: notices to agents on a busy ticket must not use up
        # the customer's acknowledgements.
        on_ticket = conn.execute(
            select(func.count()).where(
                _OUTBOX.c.ticket_id == ticket_id,
                _OUTBOX.c.kind == MessageKind.AUTO_REPLY,
                _OUTBOX.c.created_at > day_ago,
            )
        ).scalar_one()
    until = conn.scalar(select(BOUNCING.c.until).where(BOUNCING.c.address == recipient.lower()))
    return RecentMail(
        last_hour=int(row[0]),
        last_day=int(row[1]),
        ticket_last_day=int(on_ticket),
        bouncing_until=until,
    )
