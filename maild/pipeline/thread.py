"""Thread: which ticket a mail belongs to. Pure apart from the lookups it is given.

1. A Message-ID in In-Reply-To/References that belongs to a ticket: that ticket; else a
   received mail that names one of those too (one of the same thread, whose earlier mails
   are not here): its ticket.
2. A ticket tag in the subject, if the sender takes part in that ticket.
   A stranger using a valid tag gets a new ticket (and both tickets note it).
3. A mail that a reply filed earlier names in In-Reply-To/References (the reply came
   first: a bulk import in file-name order, a slow relay): the reply's ticket.
4. Otherwise a new ticket. Equal subjects alone never merge.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from maild.numbering import Numbering
from maild.types import ParsedMail


class ThreadIndex(Protocol):
    def ticket_for_message_ids(self, message_ids: list[str]) -> int | None:
        """The ticket holding one of these Message-IDs, preferring the earliest in the list."""

    def ticket_for_number(self, number: str) -> int | None: ...

    def is_participant(self, ticket_id: int, address: str) -> bool: ...

    def ticket_answering(self, message_ids: list[str]) -> int | None:
        """The ticket of the earliest received mail that names one of these ids in its
        In-Reply-To or References."""


class ThreadReason(enum.StrEnum):
    HEADER = "header"
    TAG = "tag"
    NEW = "new"
    STRANGER_TAG = "stranger_tag"
    # A mail that a reply filed before it names.
    ANSWERED = "answered"
    # agents (issue 7): a customer writing to a closed ticket (or one resolved too long
    # ago) opens a new ticket linked to it.
    FOLLOW_UP = "follow_up"


@dataclass(frozen=True, slots=True)
class ThreadDecision:
    ticket_id: int | None  # None: open a new ticket
    reason: ThreadReason
    # For STRANGER_TAG: the ticket whose tag a non-participant used; for FOLLOW_UP: the
    # old ticket.
    claimed_ticket_id: int | None = None


def thread(mail: ParsedMail, index: ThreadIndex, numbering: Numbering) -> ThreadDecision:
    # In-Reply-To names the direct parent; References may reach far back or be trimmed.
    referenced = list(dict.fromkeys([*mail.in_reply_to, *reversed(mail.references)]))
    if referenced:
        ticket_id = index.ticket_for_message_ids(referenced)
        if ticket_id is None:
            ticket_id = index.ticket_answering(referenced)
        if ticket_id is not None:
            return ThreadDecision(ticket_id, ThreadReason.HEADER)

    sender = mail.from_.address if mail.from_ else None
    claimed: int | None = None
    for number in numbering.numbers_in(mail.subject):
        ticket_id = index.ticket_for_number(number)
        if ticket_id is None:
            continue
        if sender and index.is_participant(ticket_id, sender):
            return ThreadDecision(ticket_id, ThreadReason.TAG)
        claimed = claimed or ticket_id

    if claimed is not None:
        return ThreadDecision(None, ThreadReason.STRANGER_TAG, claimed_ticket_id=claimed)
    # A content-derived id (the mail had none) is named by no reply.
    if not mail.synthetic_message_id:
        ticket_id = index.ticket_answering([mail.message_id])
        if ticket_id is not None:
            return ThreadDecision(ticket_id, ThreadReason.ANSWERED)
    return ThreadDecision(None, ThreadReason.NEW)
