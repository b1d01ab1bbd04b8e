"""Mail maild sends on behalf of agents and to agents: composed here, queued in the outbox.

Composing is pure; `queue` writes the message row (what the ticket shows) and one outbox
row per recipient (what the sender sends), in the caller's transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_bytes
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage, Message
from email.policy import SMTP
from email.policy import default as default_policy
from email.utils import format_datetime

from sqlalchemy import Connection, insert

from maild import spool
from maild.config import Settings
from maild.outbox.compose import LOOP_HEADER
from maild.outbox.tables import MESSAGE, OUTBOX
from maild.pipeline.parse import attachment_filename
from maild.types import Direction, MailClass, MessageKind

# RFC 5322 recommends at most this many ids in References; keep the first and the newest.
_MAX_REFERENCES = 20


@dataclass(frozen=True, slots=True)
class FileData:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One mail: `to`/`cc` are (address, display name)."""

    sender: str
    from_name: str
    to: tuple[tuple[str, str], ...]
    subject: str
    message_id: str
    text: str
    html: str | None = None
    cc: tuple[tuple[str, str], ...] = ()
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    attachments: tuple[FileData, ...] = ()
    # Notifications and error mails are machine-made (RFC 3834: auto-generated);
    # an agent's relayed reply is a person's mail and is not marked.
    automatic: bool = False


def references(parent: str | None, parent_references: tuple[str, ...]) -> tuple[str, ...]:
    if parent is None:
        return ()
    chain = [*dict.fromkeys([*parent_references, parent])]
    if len(chain) > _MAX_REFERENCES:
        chain = chain[:1] + chain[-(_MAX_REFERENCES - 1) :]
    return tuple(chain)


def _address(address: str, name: str) -> str | HeaderAddress:
    if not name:
        return address
    local, _, domain = address.rpartition("@")
    return HeaderAddress(display_name=name, username=local, domain=domain)


def compose(mail: Outgoing, instance_id: str, now: datetime) -> bytes:
    """The exact bytes to send."""
    message = EmailMessage()
    message["From"] = _address(mail.sender, mail.from_name)
    message["To"] = [_address(*person) for person in mail.to]
    if mail.cc:
        message["Cc"] = [_address(*person) for person in mail.cc]
    if mail.reply_to:
        message["Reply-To"] = mail.reply_to
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = mail.message_id
    if mail.in_reply_to:
        message["In-Reply-To"] = mail.in_reply_to
    if mail.references:
        message["References"] = " ".join(mail.references)
    if mail.automatic:
        message["Auto-Submitted"] = "auto-generated"
        message["X-Auto-Response-Suppress"] = "All"
        # Only machine mail carries the loop mark: the guard refuses to answer it.
        message[LOOP_HEADER] = instance_id
    message.set_content(mail.text)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    for item in mail.attachments:
        maintype, _, subtype = item.content_type.partition("/")
        message.add_attachment(
            item.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=item.filename,
        )
    return message.as_bytes(policy=SMTP)


def queue(
    conn: Connection,
    *,
    ticket_id: int,
    mail: Outgoing,
    kind: MessageKind,
    template: str,
    settings: Settings,
    now: datetime,
) -> list[int]:
    """Record `mail` on the ticket and put one outbox row per recipient; the outbox ids."""
    raw = compose(mail, settings.outbound.instance_id, now)
    message_row_id = conn.execute(
        insert(MESSAGE).returning(MESSAGE.c.id),
        {
            "ticket_id": ticket_id,
            "spool_id": None,
            "direction": Direction.OUT,
            "kind": kind,
            "mail_class": MailClass.AUTO_REPLY if mail.automatic else MailClass.HUMAN,
            "message_id": mail.message_id,
            "body_hash": hashlib.sha256(raw).hexdigest(),
            "in_reply_to": [mail.in_reply_to] if mail.in_reply_to else [],
            "references": list(mail.references),
            "from_address": mail.sender,
            "from_name": mail.from_name,
            "to": [address for address, _ in mail.to],
            "cc": [address for address, _ in mail.cc],
            "subject": mail.subject,
            "date": now,
            "text": mail.text,
            "text_stripped": mail.text,
            "html": mail.html,
            "created_at": now,
        },
    ).scalar_one()
    expires = now + timedelta(seconds=settings.outbound.max_age)
    ids: list[int] = []
    for recipient in dict.fromkeys(address for address, _ in (*mail.to, *mail.cc)):
        ids.append(
            conn.execute(
                insert(OUTBOX).returning(OUTBOX.c.id),
                {
                    "ticket_id": ticket_id,
                    "message_row_id": message_row_id,
                    "kind": kind,
                    "template": template,
                    "mail_from": mail.sender,
                    "recipient": recipient,
                    "message_id": mail.message_id,
                    "raw": raw,
                    "state": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                    "expires_at": expires,
                },
            ).scalar_one()
        )
    return ids


def attachments_of(conn: Connection, spool_id: int, limit: int) -> tuple[FileData, ...]:
    """The named, non-inline attachments of a spooled mail, while their total stays
    within `limit` bytes (the rest are left out; the ticket keeps their names)."""
    raw = spool.raw_of(conn, spool_id)
    if raw is None:
        return ()
    found: list[FileData] = []
    total = 0
    message = message_from_bytes(bytes(raw), policy=default_policy)
    for part in message.walk():
        if not _is_attachment(part):
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes) or total + len(data) > limit:
            continue
        total += len(data)
        # The same safe name the ticket shows: the raw one may carry paths or controls.
        name = attachment_filename(part) or f"attachment-{len(found) + 1}"
        found.append(FileData(name, part.get_content_type(), data))
    return tuple(found)


def _is_attachment(part: Message) -> bool:
    return (
        not part.is_multipart()
        and part.get_filename() is not None
        and part.get_content_disposition() != "inline"
    )
