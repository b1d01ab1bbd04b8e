"""Frozen values passed between pipeline steps. No behaviour, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class MailClass(enum.StrEnum):
    HUMAN = "human"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    BULK = "bulk"


class SpoolState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    QUARANTINED = "quarantined"
    IGNORED = "ignored"


class TicketStatus(enum.StrEnum):
    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"


# What an outbox row can be in (`maild outbox list --state`).
OUTBOX_STATES = ("pending", "sent", "failed", "bounced")


class MessageKind(enum.StrEnum):
    CUSTOMER = "customer"
    AGENT_REPLY = "agent_reply"
    INTERNAL_NOTE = "internal_note"
    AUTO_REPLY = "auto_reply"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: `address` is lower-cased for comparison, `name` is the decoded display name."""

    address: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the transport told us, as opposed to what the headers claim."""

    mail_from: str | None = None  # None: unknown (file import); "": the null sender <>
    rcpt_to: tuple[str, ...] = ()
    client_address: str | None = None
    helo: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True, slots=True)
class BounceReport:
    """What the DSN says about the failed delivery (RFC 3464 fields, when present)."""

    original_message_ids: tuple[str, ...]
    recipient: str | None
    status: str | None
    diagnostic: str | None
    action: str | None = None

    @property
    def delayed(self) -> bool:
        """A delay notice (RFC 3464 `Action: delayed`, or a 4.x.x status): the MTA is
        still trying, so the address is not dead."""
        return (self.action or "").lower() == "delayed" or (self.status or "").startswith("4")


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """Everything the later steps need from one raw mail.

    `message_id` is never empty: a mail without one gets a synthetic id derived from
    its content (`synthetic_message_id` is then True), so re-importing it deduplicates.
    `body_hash` identifies the body independently of transport headers (Received,
    Delivered-To), so the same mail delivered twice hashes the same.
    """

    message_id: str
    synthetic_message_id: bool
    body_hash: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    from_: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    subject: str
    date: datetime | None
    text: str
    text_stripped: str
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    defects: tuple[str, ...] = ()
    # What an RFC 3464 report (multipart/report) says, read while parsing.
    bounce_report: BounceReport | None = None

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive name), decoded, or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None
