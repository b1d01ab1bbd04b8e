"""An agent's verified mail: commands applied, the mail recorded, the text relayed."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import Connection, update

from maild.agents import store
from maild.agents.changes import plan
from maild.agents.commands import HELP, Parsed, parse_commands
from maild.agents.mailer import Mailer
from maild.agents.notify import Notifier
from maild.agents.outgoing import Outgoing, attachments_of, references
from maild.agents.recognise import AgentMail
from maild.db.models import Ticket
from maild.logs import event
from maild.outbox.compose import new_message_id
from maild.pipeline.apply import EventRow, record_events
from maild.pipeline.text import strip_reply
from maild.rules.teams import Agent, Directory
from maild.types import Envelope, MessageKind, ParsedMail

log = logging.getLogger("maild.agents")

AGENT_REPLY = "requester/agent_reply"
COMMAND_ERROR = "agent/command_error"


class Replies:
    def __init__(self, mailer: Mailer, notifier: Notifier) -> None:
        self._mailer = mailer
        self._notifier = notifier
        self._settings = mailer.settings
        self._agents = mailer.settings.agents

    def handle(
        self,
        conn: Connection,
        found: AgentMail,
        mail: ParsedMail,
        envelope: Envelope,
        spool_id: int,
        directory: Directory,
        now: datetime,
    ) -> None:
        """Apply a verified agent's commands, record the mail, relay it to the customer.
        An invalid command stops everything but the error mail to the agent."""
        agent = found.agent
        text = strip_reply(mail.text, keep_signature=self._agents.keep_signature)
        parsed = parse_commands(text, agent.address, directory)
        sender = self._mailer.support_address(mail, envelope)
        if parsed.errors:
            self._refuse_commands(conn, found, mail, parsed, sender, now)
            return
        internal = found.internal or parsed.note
        # Only a text for the customer is a reply (what the SLA counts); a note, or a mail
        # of commands alone, stays internal.
        answered = not internal and bool(parsed.body.strip())
        relay = answered and not parsed.nosend
        changes = plan(
            store.ticket_state(conn, found.ticket_id),
            parsed.commands,
            directory,
            replied=answered,
            now=now,
        )
        kind = MessageKind.AGENT_REPLY if answered else MessageKind.INTERNAL_NOTE
        store.store_agent_mail(conn, found.ticket_id, mail, kind, parsed.body, spool_id, now)
        events = [EventRow(found.ticket_id, k, d) for k, d in changes.events]
        if internal:
            events.append(
                EventRow(found.ticket_id, "internal_note", {"message_id": mail.message_id})
            )
        elif answered and not relay:
            events.append(EventRow(found.ticket_id, "agent_reply_not_sent", {"why": "#nosend"}))
        if relay:
            events += self._relay(conn, found, mail, parsed.body, sender, spool_id, directory, now)
        conn.execute(
            update(Ticket)
            .where(Ticket.id == found.ticket_id)
            .values(updated_at=now, **changes.changes)
        )
        record_events(conn, events, now, actor=agent.address)
        handed = _handed_to(parsed, directory)
        if handed:
            self._notifier.assigned(conn, found.ticket_id, handed, agent, sender, now)
        event(
            log,
            "agent mail",
            ticket=found.number,
            agent=agent.address,
            kind=kind.value,
            relayed=relay,
            commands=len(parsed.commands),
        )

    def _relay(
        self,
        conn: Connection,
        found: AgentMail,
        mail: ParsedMail,
        body: str,
        sender: str,
        spool_id: int,
        directory: Directory,
        now: datetime,
    ) -> list[EventRow]:
        """Queue the agent's text to the requester and the cc'd contacts."""
        ticket_id, agent = found.ticket_id, found.agent
        if not self._settings.outbound.enabled:
            return [EventRow(ticket_id, "agent_reply_not_sent", {"why": "outbound mail is off"})]
        # A customer the agent wrote to directly (Reply All) has the mail already.
        direct = {a.address for a in (*mail.to, *mail.cc)}
        everyone = store.customers(conn, ticket_id, self._settings, directory)
        people = tuple(person for person in everyone if person[0] not in direct)
        if not people:
            why = "every customer got it directly" if everyone else "no customer to send to"
            return [EventRow(ticket_id, "agent_reply_not_sent", {"why": why})]
        context = self._mailer.context(conn, ticket_id, sender)
        context["message"] = {**context["message"], "text": body}
        rendered = self._mailer.render(conn, ticket_id, AGENT_REPLY, context, now)
        if rendered is None:
            return []
        parent = store.last_customer_mail(conn, ticket_id)
        limit = self._agents.attachment_limit
        files = attachments_of(conn, spool_id, limit) if mail.attachments else ()
        outgoing = Outgoing(
            sender=sender,
            from_name=self._agents.from_name.replace("{agent}", agent.name or agent.address),
            to=people[:1],
            cc=people[1:],
            reply_to=sender,
            subject=self._mailer.numbering.with_tag(rendered.subject, found.number),
            message_id=new_message_id(self._mailer.domain(sender)),
            text=rendered.text,
            html=rendered.html,
            in_reply_to=parent[0] if parent else None,
            references=references(parent[0], parent[1]) if parent else (),
            attachments=files,
        )
        ids = self._mailer.queue(
            conn, ticket_id, outgoing, MessageKind.AGENT_REPLY, AGENT_REPLY, now
        )
        data = {
            "message_id": outgoing.message_id,
            "recipients": [address for address, _ in people],
            "outbox_ids": ids,
            "attachments": [f.filename for f in files],
        }
        events = [EventRow(ticket_id, "agent_reply_sent", data)]
        if not store.responded_before(conn, ticket_id):
            # Stops the first-response clock of the SLA.
            events.append(EventRow(ticket_id, "first_response", {"at": now.isoformat()}))
        return events

    def _refuse_commands(
        self,
        conn: Connection,
        found: AgentMail,
        mail: ParsedMail,
        parsed: Parsed,
        sender: str,
        now: datetime,
    ) -> None:
        """Nothing applied or relayed; the agent is told what was wrong."""
        agent, number = found.agent, found.number
        context = self._mailer.context(conn, found.ticket_id, sender)
        context["agent"] = {"address": agent.address, "name": agent.name}
        context["errors"] = list(parsed.errors)
        context["commands"] = [list(entry) for entry in HELP]
        context["message"] = {**context["message"], "subject": mail.subject}
        rendered = self._mailer.render(conn, found.ticket_id, COMMAND_ERROR, context, now)
        if rendered is not None:
            keyring = self._mailer.keyring
            outgoing = Outgoing(
                sender=sender,
                from_name="",
                to=((agent.address, agent.name),),
                reply_to=keyring.reply_address(sender, number, agent.address),
                subject=self._mailer.numbering.with_tag(rendered.subject, number),
                message_id=keyring.message_id(self._mailer.domain(sender), number, agent.address),
                text=rendered.text,
                html=rendered.html,
                in_reply_to=mail.message_id,
                references=references(mail.message_id, mail.references),
                automatic=True,
            )
            self._mailer.queue(
                conn, found.ticket_id, outgoing, MessageKind.SYSTEM, COMMAND_ERROR, now
            )
        data = {"message_id": mail.message_id, "errors": list(parsed.errors)}
        record_events(
            conn,
            [EventRow(found.ticket_id, "agent_commands_refused", data)],
            now,
            actor=agent.address,
        )
        event(
            log,
            "agent commands refused",
            logging.WARNING,
            ticket=number,
            agent=agent.address,
            errors="; ".join(parsed.errors),
        )


def _handed_to(parsed: Parsed, directory: Directory) -> list[Agent]:
    """Whom the last #assign gave the ticket to: the agent, or the team's members."""
    assigns = [c for c in parsed.commands if c.name == "assign"]
    if not assigns:
        return []
    what, name = assigns[-1].value
    if what == "agent":
        return [directory.agents[name]]
    return list(directory.members(name))
