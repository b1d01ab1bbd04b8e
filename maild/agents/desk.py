"""The agents' side of the pipeline, as the orchestrator sees it.

Everything runs in the transaction that processes the mail (the caller's connection),
so a relayed reply, its ticket changes and its events exist together or not at all.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Connection

from maild.agents import store
from maild.agents.mailer import Mailer
from maild.agents.notify import Notifier
from maild.agents.recognise import AgentMail, IdentityRules, recognise
from maild.agents.reply import Replies
from maild.agents.tokens import Keyring
from maild.config import Settings
from maild.db.queries import CurrentTicket
from maild.logs import event
from maild.numbering import Numbering
from maild.pipeline.apply import EventRow, record_events
from maild.pipeline.thread import ThreadDecision, ThreadReason
from maild.rules.teams import Directory
from maild.types import Envelope, MailClass, ParsedMail, TicketStatus

log = logging.getLogger("maild.agents")


class AgentDesk:
    """Built once per settings (keys and templates load here); its methods run per mail."""

    def __init__(self, settings: Settings, numbering: Numbering) -> None:
        self._settings = settings.agents
        self._keyring = Keyring.from_settings(settings.agents)
        mailer = Mailer(settings, numbering, self._keyring)
        self._notifier = Notifier(mailer)
        self._replies = Replies(mailer, self._notifier)
        self.notify = self._notifier.notify
        self.handle = self._replies.handle
        self._identity = IdentityRules(
            settings.agents.identity,
            tuple(settings.agents.trusted_authserv_ids),
            settings.agents.internal_address,
        )

    def identify(
        self,
        conn: Connection,
        mail: ParsedMail,
        mail_class: MailClass,
        envelope: Envelope,
        decision: ThreadDecision,
        directory: Directory,
    ) -> AgentMail | None:
        """An agent's own mail about a ticket (an agent's out-of-office is not one)."""
        if mail_class is not MailClass.HUMAN:
            return None
        lookup = store.SqlTickets(conn)
        return recognise(mail, envelope, decision, directory, self._keyring, self._identity, lookup)

    def refuse(self, conn: Connection, found: AgentMail, mail: ParsedMail, now: datetime) -> None:
        """Mail from an agent's address that failed the identity check: noted, not acted on."""
        data = {
            "agent": found.agent.address,
            "message_id": mail.message_id,
            "reason": found.verdict.reason,
        }
        record_events(conn, [EventRow(found.ticket_id, "unverified_agent_mail", data)], now)
        event(
            log,
            "unverified agent mail",
            logging.WARNING,
            ticket=found.number,
            agent=found.agent.address,
            message_id=mail.message_id,
            reason=found.verdict.reason,
        )

    def follow_up(
        self,
        conn: Connection,
        decision: ThreadDecision,
        mail_class: MailClass,
        current: CurrentTicket | None,
        now: datetime,
    ) -> ThreadDecision:
        """A customer writing to a closed ticket, or to one resolved more than
        `reopen_days` ago, gets a new ticket linked to the old one; otherwise `decision`.
        `current`: the ticket the decision names."""
        if current is None or mail_class is not MailClass.HUMAN:
            return decision
        if current.status == TicketStatus.RESOLVED:
            resolved_at = store.resolved_at(conn, current.id) or current.updated_at
            if now - resolved_at <= timedelta(days=self._settings.reopen_days):
                return decision
        elif current.status != TicketStatus.CLOSED:
            return decision
        return ThreadDecision(None, ThreadReason.FOLLOW_UP, claimed_ticket_id=decision.ticket_id)
