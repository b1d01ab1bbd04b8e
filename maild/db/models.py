"""The tables of ARCHITECTURE.md. Alembic migrations in db/migrations must match these."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from maild.db.base import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class SpoolEntry(Base):
    """A mail as received: its envelope and state here, its bytes in SpoolRaw. Never
    deleted by processing."""

    __tablename__ = "spool"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    received_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(32))
    envelope: Mapped[dict[str, Any]]
    size: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    step: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]
    # Read from the headers when spooled, so quarantine listings need not re-parse.
    header_from: Mapped[str | None] = mapped_column(Text)
    header_subject: Mapped[str | None] = mapped_column(Text)
    header_message_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_spool_state_id", "state", "id"),)


class SpoolRaw(Base):
    """The bytes of a spooled mail, exactly as received, in a row of their own.

    SQLite rewrites a whole row, overflow pages and all, when an UPDATE changes its size,
    as marking a mail processed does: with the bytes in the spool row every mail was
    written twice (once when spooled, again when processed).
    """

    __tablename__ = "spool_raw"

    spool_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("spool.id"), primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class Contact(Base):
    __tablename__ = "contact"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class Ticket(Base):
    __tablename__ = "ticket"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    # Derived from id by the configured format; NULL only inside the creating transaction.
    number: Mapped[str | None] = mapped_column(String(64), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="new")
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    type: Mapped[str | None] = mapped_column(String(32))
    queue: Mapped[str | None] = mapped_column(String(64))
    team: Mapped[str | None] = mapped_column(String(64))
    tier: Mapped[int | None]
    assignee: Mapped[str | None] = mapped_column(String(320), index=True)
    # When the assignee was last set: round-robin assignment continues after the latest.
    assigned_at: Mapped[datetime | None]
    tags: Mapped[list[str]] = mapped_column(default=list, server_default="[]")
    requester_id: Mapped[int] = mapped_column(ForeignKey("contact.id"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    sla_policy: Mapped[str | None] = mapped_column(String(64))
    first_response_due_at: Mapped[datetime | None]
    next_response_due_at: Mapped[datetime | None]
    resolution_due_at: Mapped[datetime | None]
    next_sla_check_at: Mapped[datetime | None] = mapped_column(index=True)
    # SLA clock state (maild/sla/track.py): the policy and priority the due times were
    # computed for, when the clock was paused, and the cycle each re-armed target is in.
    sla_applied: Mapped[str | None] = mapped_column(String(64))
    sla_priority: Mapped[str | None] = mapped_column(String(16))
    sla_paused_at: Mapped[datetime | None]
    sla_response_cycle: Mapped[int] = mapped_column(default=0, server_default="0")
    sla_resolution_cycle: Mapped[int] = mapped_column(default=0, server_default="0")

    requester: Mapped[Contact] = relationship(lazy="joined")
    messages: Mapped[list[Message]] = relationship(
        back_populates="ticket", order_by="Message.id", lazy="raise"
    )

    __table_args__ = (Index("ix_ticket_status_updated_at", "status", "updated_at"),)


class TicketContact(Base):
    """Who takes part in a ticket: the requester and everyone on From/To/Cc of its mails."""

    __tablename__ = "ticket_contact"

    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contact.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))


class Message(Base):
    __tablename__ = "message"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), index=True)
    spool_id: Mapped[int | None] = mapped_column(ForeignKey("spool.id"))
    direction: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(16))
    mail_class: Mapped[str] = mapped_column(String(16))
    # Looked up through the unique constraint below, an index that begins with it.
    message_id: Mapped[str] = mapped_column(String(998))
    body_hash: Mapped[str] = mapped_column(String(64))
    in_reply_to: Mapped[list[str]]
    references: Mapped[list[str]]
    from_address: Mapped[str | None] = mapped_column(String(320))
    from_name: Mapped[str] = mapped_column(Text, default="")
    to: Mapped[list[str]]
    cc: Mapped[list[str]]
    subject: Mapped[str] = mapped_column(Text)
    date: Mapped[datetime | None]
    text: Mapped[str] = mapped_column(Text)
    text_stripped: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", order_by="Attachment.id", lazy="selectin"
    )

    # The dedupe key: the same mail delivered twice is stored once, even by two instances.
    __table_args__ = (UniqueConstraint("message_id", "body_hash"),)


class MessageRef(Base):
    """A Message-ID that a received message names in In-Reply-To or References: found
    again when that mail comes after its reply (pipeline/thread.py)."""

    __tablename__ = "message_ref"
    # Looked up by ref: the key leads with it, and on SQLite the rows live in that one
    # B-tree (no rowid table and index beside it), so a reply writes one structure.
    __table_args__ = ({"sqlite_with_rowid": False},)

    ref: Mapped[str] = mapped_column(String(998), primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id"), primary_key=True)


class Attachment(Base):
    """Metadata only: the bytes stay in the raw mail of the spool row."""

    __tablename__ = "attachment"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id"), index=True)
    filename: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_id: Mapped[str | None] = mapped_column(Text)
    inline: Mapped[bool] = mapped_column(default=False)

    message: Mapped[Message] = relationship(back_populates="attachments")


class Event(Base):
    """The audit trail: every status change, rule, reminder, with actor and data."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(320))
    data: Mapped[dict[str, Any]]


class ImapCheckpoint(Base):
    """How far a mailbox folder has been taken into the spool and acknowledged.

    Messages with a UID above `last_uid` are new, as long as the folder's UIDVALIDITY
    is still `uidvalidity`; when it changes the folder is rescanned from the start.
    """

    __tablename__ = "imap_checkpoint"

    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)
    folder: Mapped[str] = mapped_column(String(500), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class ImapLease(Base):
    """Which instance polls a mailbox; another may take it over once `expires_at` passed."""

    __tablename__ = "imap_lease"

    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class ImapOAuthToken(Base):
    """The newest refresh token of a mailbox using the OAuth2 refresh-token flow.

    `seed_sha256` fingerprints the operator's refresh token (from the environment) this
    one descends from: when the operator sets a new one, it wins over the stored chain.
    """

    __tablename__ = "imap_oauth_token"

    mailbox: Mapped[str] = mapped_column(String(200), primary_key=True)
    refresh_token: Mapped[str] = mapped_column(Text)
    seed_sha256: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Outbox(Base):
    """A mail to send, composed when queued: `raw` is exactly what goes over SMTP.

    `state` is pending (to send at `next_attempt_at`), sent, failed, or bounced (a DSN
    came back for it after it was sent). A sender claims a
    row by moving `next_attempt_at` past its send, so a sender that dies mid-send only
    delays the row: at-least-once, never lost.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id"), index=True)
    # The message row recording this mail on its ticket.
    message_row_id: Mapped[int | None] = mapped_column(ForeignKey("message.id"))
    kind: Mapped[str] = mapped_column(String(16))
    template: Mapped[str | None] = mapped_column(String(200))
    mail_from: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(320))
    # Matches a bounce (DSN) of this mail back to the row.
    message_id: Mapped[str] = mapped_column(String(998), index=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    # Temporary failures stop being retried after this; `maild outbox retry` moves it.
    expires_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
        # Rate limits count a recipient's recent automatic mails.
        Index("ix_outbox_recipient_created_at", "recipient", "created_at"),
    )


class BouncingAddress(Base):
    """An address that bounced our mail: it gets no automatic mail until `until`."""

    __tablename__ = "bouncing_address"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    until: Mapped[datetime]
    # The DSN status (5.1.1) or the relay's reply, as recorded on the ticket.
    reason: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


class SlaStage(Base):
    """The SLA ledger: one row per escalation stage fired (or skipped after downtime).

    The unique key is what makes a reminder go out once, even with several sweepers.
    """

    __tablename__ = "sla_stage"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"))
    target: Mapped[str] = mapped_column(String(32))
    cycle: Mapped[int]
    stage: Mapped[str] = mapped_column(String(64))
    occurrence: Mapped[int]
    outcome: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[datetime]
    fired_at: Mapped[datetime]
    data: Mapped[dict[str, Any]]

    __table_args__ = (UniqueConstraint("ticket_id", "target", "cycle", "stage", "occurrence"),)
