"""`maild templates render`: a template composed into the mail as it would be sent.

The sample context (or a stored ticket's) goes through the same `compose_reply` as a real
acknowledgement, so the preview shows the headers maild adds as well as the parts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from maild.config import Settings
from maild.db.models import Ticket
from maild.numbering import Numbering
from maild.outbox.compose import Composed, compose_reply, new_message_id, sending_address
from maild.outbox.context import first_recipients, stored_message_context, ticket_context
from maild.templating import Templates, sample_context
from maild.types import Envelope


class NoSuchTicket(LookupError):
    pass


def context_of_ticket(
    conn: Connection, name: str, number: str, settings: Settings, numbering: Numbering
) -> dict[str, Any]:
    """The context template `name` gets for ticket `number` now (its latest inbound mail
    as `message`); what a stored ticket cannot tell (an agent, an SLA stage) keeps its
    sample value. Raises NoSuchTicket."""
    ticket_id = conn.scalar(select(Ticket.id).where(Ticket.number == number))
    if ticket_id is None:
        raise NoSuchTicket(f"no ticket {number}")
    real = ticket_context(conn, ticket_id, numbering)
    message = stored_message_context(conn, ticket_id)
    if message is not None:
        real["message"] = message
    envelope = Envelope(rcpt_to=first_recipients(conn, ticket_id))
    real["support_address"] = sending_address(settings, envelope)
    context = sample_context(name)
    for key, value in real.items():
        sample = context.get(key)
        context[key] = {**sample, **value} if isinstance(sample, dict) else value
    return context


def render_mail(
    templates: Templates,
    name: str,
    context: dict[str, Any],
    *,
    language: str | None,
    settings: Settings,
    numbering: Numbering,
    now: datetime,
) -> Composed:
    """Compose `name` as an automatic reply to `context`'s message. Raises
    TemplateMissing or a jinja2 TemplateError, as the template check reports them."""
    rendered = templates.render(name, context, language)
    sender = str(context["support_address"])
    domain = settings.outbound.message_id_domain or sender.rpartition("@")[2]
    return compose_reply(
        rendered,
        subject=numbering.with_tag(rendered.subject, str(context["ticket"]["number"])),
        sender=sender,
        recipient=(str(context["requester"]["address"]), str(context["requester"]["name"])),
        parent_message_id=str(context["message"]["message_id"]),
        parent_references=(),
        message_id=new_message_id(domain),
        instance_id=settings.outbound.instance_id,
        now=now,
    )
