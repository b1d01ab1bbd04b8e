"""Notifications to agents about customers' mail, each with a signed reply address."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from maild.agents import store
from maild.agents.commands import HELP
from maild.agents.mailer import Mailer
from maild.agents.outgoing import FileData, Outgoing, attachments_of
from maild.db.models import Ticket
from maild.pipeline.apply import EventRow, record_events
from maild.rules.teams import Agent, Directory
from maild.types import Envelope, MailClass, MessageKind, ParsedMail

NEW_TICKET = "agent/new_ticket"
CUSTOMER_REPLIED = "agent/customer_replied"
ASSIGNED = "agent/assigned"


class Notifier:
    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer
        self._settings = mailer.settings

    def notify(
        self,
        conn: Connection,
        *,
        ticket_id: int,
        created_ticket: bool,
        mail: ParsedMail,
        mail_class: MailClass,
        envelope: Envelope,
        spool_id: int,
        directory: Directory,
        now: datetime,
    ) -> None:
        """Tell the agents about a customer's mail: a new ticket to its assignee (else its
        team), a follow-up to the assignee. Automatic mail tells nobody."""
        if not (self._settings.agents.notify and self._settings.outbound.enabled):
            return
        if mail_class is not MailClass.HUMAN:
            return
        row = conn.execute(
            select(Ticket.number, Ticket.assignee, Ticket.team).where(Ticket.id == ticket_id)
        ).one()
        sender_address = mail.from_.address if mail.from_ else ""
        agents = [
            a
            for a in _recipients(row.assignee, row.team if created_ticket else None, directory)
            if a.address != sender_address
        ]
        if not agents:
            return
        template = NEW_TICKET if created_ticket else CUSTOMER_REPLIED
        sender = self._mailer.support_address(mail, envelope)
        number = str(row.number)
        limit = self._settings.agents.attachment_limit
        files = attachments_of(conn, spool_id, limit) if mail.attachments else ()
        attached = {f.filename for f in files}
        context = self._mailer.context(conn, ticket_id, sender)
        context["attachments"] = [
            {"filename": a.filename, "size": a.size, "attached": a.filename in attached}
            for a in mail.attachments
            if not a.inline
        ]
        context["history"] = store.history(conn, ticket_id)
        context["notes"] = store.notes(conn, ticket_id)
        context["commands"] = [list(entry) for entry in HELP]
        self._send(conn, ticket_id, number, template, context, agents, sender, files, now)

    def assigned(
        self,
        conn: Connection,
        ticket_id: int,
        agents: list[Agent],
        by: Agent,
        sender: str,
        now: datetime,
    ) -> None:
        """Tell agents a colleague handed the ticket to them (or to their team)."""
        agents = [a for a in agents if a.address != by.address]
        if not (agents and self._settings.agents.notify and self._settings.outbound.enabled):
            return
        number = str(conn.scalar(select(Ticket.number).where(Ticket.id == ticket_id)))
        context = self._mailer.context(conn, ticket_id, sender)
        context["attachments"] = []
        context["history"] = store.history(conn, ticket_id)
        context["notes"] = store.notes(conn, ticket_id)
        context["commands"] = [list(entry) for entry in HELP]
        context["assigned_by"] = {"address": by.address, "name": by.name}
        self._send(conn, ticket_id, number, ASSIGNED, context, agents, sender, (), now)

    def _send(
        self,
        conn: Connection,
        ticket_id: int,
        number: str,
        template: str,
        context: dict[str, Any],
        agents: list[Agent],
        sender: str,
        files: tuple[FileData, ...],
        now: datetime,
    ) -> None:
        """One mail per agent, each with its own signed Reply-To and Message-ID."""
        keyring = self._mailer.keyring
        notified: list[str] = []
        for agent in agents:
            reply_address = keyring.reply_address(sender, number, agent.address)
            personal = {
                **context,
                "agent": {"address": agent.address, "name": agent.name},
                "reply_address": reply_address,
            }
            rendered = self._mailer.render(conn, ticket_id, template, personal, now)
            if rendered is None:
                break
            outgoing = Outgoing(
                sender=sender,
                from_name="",
                to=((agent.address, agent.name),),
                reply_to=reply_address,
                subject=self._mailer.numbering.with_tag(rendered.subject, number),
                message_id=keyring.message_id(self._mailer.domain(sender), number, agent.address),
                text=rendered.text,
                html=rendered.html,
                attachments=files,
                automatic=True,
            )
            self._mailer.queue(conn, ticket_id, outgoing, MessageKind.SYSTEM, template, now)
            notified.append(agent.address)
        if notified:
            data = {"template": template, "agents": notified}
            record_events(conn, [EventRow(ticket_id, "agents_notified", data)], now)


def _recipients(assignee: str | None, team: str | None, directory: Directory) -> list[Agent]:
    """The assignee if there is one, else the team's active members (team None: nobody)."""
    if assignee:
        found = directory.agents.get(assignee)
        return [found] if found is not None else []
    return list(directory.members(team)) if team else []
