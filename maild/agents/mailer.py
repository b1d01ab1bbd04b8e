"""What every mail to or for agents shares: templates, context, sender, signing, queueing."""

from __future__ import annotations

import logging
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import Connection, select

from maild.agents.outgoing import Outgoing, queue
from maild.agents.recognise import recipients
from maild.agents.store import latest_customer_message
from maild.agents.tokens import Keyring
from maild.config import Settings
from maild.db.models import Message, Ticket
from maild.logs import event
from maild.numbering import Numbering
from maild.outbox.context import ticket_context
from maild.pipeline.apply import EventRow, record_events
from maild.templating import Rendered, TemplateMissing, Templates
from maild.types import Envelope, MessageKind, ParsedMail

log = logging.getLogger("maild.agents")


class Mailer:
    """Built once per settings (templates and keys load here)."""

    def __init__(self, settings: Settings, numbering: Numbering, keyring: Keyring) -> None:
        self.settings = settings
        self.numbering = numbering
        self.keyring = keyring
        self._templates = Templates(settings.paths.templates, settings.outbound.language)

    def render(
        self,
        conn: Connection,
        ticket_id: int,
        template: str,
        context: dict[str, Any],
        now: datetime,
    ) -> Rendered | None:
        """The rendered template; None (and an `agent_mail_failed` event) if it is broken:
        a broken operator template must not cost the mail its ticket."""
        try:
            return self._templates.render(template, context)
        except (TemplateError, TemplateMissing) as exc:
            reason = f"template {template}: {exc}"
            event(log, "agent mail not composed", logging.ERROR, reason=reason)
            record_events(conn, [EventRow(ticket_id, "agent_mail_failed", {"reason": reason})], now)
            return None

    def context(self, conn: Connection, ticket_id: int, sender: str) -> dict[str, Any]:
        """What every template gets (outbox/context.py), with the agents' extra fields and
        `message` being the customer's latest mail (stripped), never an agent's."""
        context = ticket_context(conn, ticket_id, self.numbering)
        extra = conn.execute(select(Ticket.tier, Ticket.tags).where(Ticket.id == ticket_id)).one()
        context["ticket"].update(tier=extra.tier, tags=list(extra.tags or []))
        latest = conn.execute(
            latest_customer_message(
                ticket_id, Message.subject, Message.text_stripped, Message.message_id, Message.date
            )
        ).first()
        context["message"] = {
            "subject": latest.subject if latest else context["ticket"]["subject"],
            "text": latest.text_stripped if latest else "",
            "message_id": latest.message_id if latest else "",
            "date": format_datetime(latest.date) if latest and latest.date else "",
        }
        context["support_address"] = sender
        return context

    def support_address(self, mail: ParsedMail, envelope: Envelope) -> str:
        """The support address the mail came in on (without a reply token), else the first."""
        internal = self.settings.agents.internal_address
        for address in recipients(mail, envelope):
            local, _, domain = address.rpartition("@")
            base = f"{local.partition('+')[0]}@{domain}"
            if base != internal and base in self.settings.mail.support_addresses:
                return base
        return self.settings.mail.support_addresses[0]

    def domain(self, sender: str) -> str:
        """The domain of our Message-IDs."""
        return self.settings.outbound.message_id_domain or sender.rpartition("@")[2]

    def queue(
        self,
        conn: Connection,
        ticket_id: int,
        mail: Outgoing,
        kind: MessageKind,
        template: str,
        now: datetime,
    ) -> list[int]:
        return queue(
            conn,
            ticket_id=ticket_id,
            mail=mail,
            kind=kind,
            template=template,
            settings=self.settings,
            now=now,
        )
