"""Identify: is this mail an agent working on a ticket, and is it really the agent?

Pure apart from the one lookup it is given. Runs after `thread`: an agent's reply is
recognised by the thread decision (header or tag), by the signed reply address it was
sent to, or by the signed Message-ID of a notification it answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from maild.agents.identity import Policy, Verdict, authenticated, decide
from maild.agents.tokens import Keyring, Token, read_message_id, read_reply_address
from maild.pipeline.thread import ThreadDecision, ThreadReason
from maild.rules.teams import Agent, Directory
from maild.types import Envelope, ParsedMail


class TicketLookup(Protocol):
    def ticket_number(self, ticket_id: int) -> str | None: ...

    def ticket_for_number(self, number: str) -> int | None:
        """The ticket with this number, compared case-insensitively."""
        ...


@dataclass(frozen=True, slots=True)
class AgentMail:
    """A mail from an agent's address about a ticket; `verdict` says if it is theirs."""

    agent: Agent
    ticket_id: int
    number: str
    verdict: Verdict
    # Sent to the internal address: a note, never relayed.
    internal: bool


@dataclass(frozen=True, slots=True)
class IdentityRules:
    policy: Policy
    trusted_authserv_ids: tuple[str, ...]
    internal_address: str | None


def recipients(mail: ParsedMail, envelope: Envelope) -> list[str]:
    """Everywhere the mail says it went: envelope, Delivered-To, To, Cc (lower-cased)."""
    found = [
        *envelope.rcpt_to,
        *mail.headers.get("delivered-to", ()),
        *(a.address for a in (*mail.to, *mail.cc)),
    ]
    return list(dict.fromkeys(a.strip().strip("<>").lower() for a in found if a))


def recognise(
    mail: ParsedMail,
    envelope: Envelope,
    decision: ThreadDecision,
    directory: Directory,
    keyring: Keyring,
    rules: IdentityRules,
    lookup: TicketLookup,
) -> AgentMail | None:
    """The agent mail, or None when the sender is no (active) agent or it concerns no
    ticket."""
    sender = mail.from_.address if mail.from_ else ""
    agent = directory.agents.get(sender.lower())
    if agent is None or not agent.active:
        # An inactive agent is kept for history only: their mail is a customer's.
        return None
    to = recipients(mail, envelope)
    tokens = [t for t in map(read_reply_address, to) if t is not None]
    signed_ids = [
        t for t in map(read_message_id, (*mail.in_reply_to, *mail.references)) if t is not None
    ]
    valid = [t for t in tokens if keyring.verify(t, agent.address)]

    ticket_id = decision.ticket_id
    if ticket_id is None and decision.reason is ThreadReason.STRANGER_TAG:
        # Agents take part in every ticket: a tag is enough to find it.
        ticket_id = decision.claimed_ticket_id
    for token in (*valid, *(t for t in signed_ids if keyring.verify(t, agent.address))):
        if ticket_id is not None:
            break
        ticket_id = lookup.ticket_for_number(token.ticket)
    if ticket_id is None:
        return None
    number = lookup.ticket_number(ticket_id) or ""
    token_ok = any(_names(t, number) for t in valid)
    auth = authenticated(
        mail.headers.get("authentication-results", ()),
        agent.address,
        rules.trusted_authserv_ids,
    )
    verdict = decide(rules.policy, token_ok, auth)
    if tokens and not token_ok and verdict.verified is False:
        verdict = Verdict(
            False, verdict.proofs, "reply address not valid for this agent and ticket"
        )
    internal = rules.internal_address is not None and rules.internal_address in to
    return AgentMail(agent, ticket_id, number, verdict, internal)


def _names(token: Token, number: str) -> bool:
    return token.ticket == number.lower()
