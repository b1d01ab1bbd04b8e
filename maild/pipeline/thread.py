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


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """What `thread` looks a mail up by: a few strings, where the mail is kilobytes."""

    # In-Reply-To (the direct parent) first, then References, newest first: they may
    # reach far back or be trimmed.
    referenced: tuple[str, ...]
    numbers: tuple[str, ...]  # ticket numbers tagged in the subject, in order
    own_id: str | None  # None for an id made up from the content: no reply names it


def thread_keys(mail: ParsedMail, numbering: Numbering) -> ThreadKeys:
    return ThreadKeys(
        referenced=tuple(dict.fromkeys([*mail.in_reply_to, *reversed(mail.references)])),
        numbers=tuple(numbering.numbers_in(mail.subject)),
        own_id=None if mail.synthetic_message_id else mail.message_id,
    )


def thread(mail: ParsedMail, index: ThreadIndex, numbering: Numbering) -> ThreadDecision:
    keys = thread_keys(mail, numbering)
    if keys.referenced:
        ticket_id = index.ticket_for_message_ids(list(keys.referenced))
        if ticket_id is None:
            ticket_id = index.ticket_answering(list(keys.referenced))
        if ticket_id is not None:
            return ThreadDecision(ticket_id, ThreadReason.HEADER)

    sender = mail.from_.address if mail.from_ else None
    claimed: int | None = None
    for number in keys.numbers:
        ticket_id = index.ticket_for_number(number)
        if ticket_id is None:
            continue
        if sender and index.is_participant(ticket_id, sender):
            return ThreadDecision(ticket_id, ThreadReason.TAG)
        claimed = claimed or ticket_id

    if claimed is not None:
        return ThreadDecision(None, ThreadReason.STRANGER_TAG, claimed_ticket_id=claimed)
    if keys.own_id is not None:
        ticket_id = index.ticket_answering([keys.own_id])
        if ticket_id is not None:
            return ThreadDecision(ticket_id, ThreadReason.ANSWERED)
    return ThreadDecision(None, ThreadReason.NEW)


def may_thread(keys: ThreadKeys, index: ThreadIndex) -> bool:
    """Whether any lookup `thread` makes for these keys finds a ticket. Without the
    participant check, so it may say yes for a mail that `thread` would still leave
    without a ticket, but never no for one it would give a ticket."""
    referenced = list(keys.referenced)
    if referenced and (
        index.ticket_for_message_ids(referenced) is not None
        or index.ticket_answering(referenced) is not None
    ):
        return True
    if any(index.ticket_for_number(number) is not None for number in keys.numbers):
        return True
    return keys.own_id is not None and index.ticket_answering([keys.own_id]) is not None
