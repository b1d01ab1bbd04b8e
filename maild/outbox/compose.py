"""Compose an automatic reply: rendered template in, exact bytes out. Pure; no I/O.

The bytes are composed when the mail is queued and stored in the outbox row, so the
message recorded on the ticket is exactly the one sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from maild.config import Settings
from maild.templating import Rendered
from maild.types import Envelope

LOOP_HEADER = "X-Maild-Loop"
# RFC 5322 recommends at most this many ids in References; keep the first and the newest.
_MAX_REFERENCES = 20


@dataclass(frozen=True, slots=True)
class Composed:
    message_id: str
    mail_from: str
    recipient: str
    subject: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    html: str | None
    raw: bytes


def sending_address(settings: Settings, envelope: Envelope) -> str:
    """The support address the mail came in on, else the first configured one.

    A sub-address (an agent's signed reply address, `support+…`) stands for its base
    address: tokens are for agents' eyes, never a customer's From. The internal-notes
    address never sends to customers.
    """
    for rcpt in envelope.rcpt_to:
        address = rcpt.lower()
        if address == settings.agents.internal_address or not settings.is_support_address(address):
            continue
        local, _, domain = address.rpartition("@")
        return f"{local.partition('+')[0]}@{domain}"
    return settings.mail.support_addresses[0]


def new_message_id(domain: str) -> str:
    return f"<{uuid.uuid4().hex}@{domain}>"


def _references(parent: str, parent_references: Sequence[str]) -> tuple[str, ...]:
    chain = [*dict.fromkeys([*parent_references, parent])]
    if len(chain) > _MAX_REFERENCES:
        chain = chain[:1] + chain[-(_MAX_REFERENCES - 1) :]
    return tuple(chain)


def compose_reply(
    rendered: Rendered,
    *,
    subject: str,
    sender: str,
    recipient: tuple[str, str],
    parent_message_id: str,
    parent_references: Sequence[str],
    message_id: str,
    instance_id: str,
    now: datetime,
) -> Composed:
    """An RFC 3834 automatic reply to `parent_message_id`, from `sender` to `recipient`
    (address, display name). `subject` already carries the ticket tag."""
    references = _references(parent_message_id, parent_references)
    mail = EmailMessage()
    mail["From"] = sender
    # Replies thread back to the support address even from clients that ignore From.
    mail["Reply-To"] = sender
    mail["To"] = _address(*recipient)
    mail["Subject"] = subject
    mail["Date"] = format_datetime(now)
    mail["Message-ID"] = message_id
    mail["In-Reply-To"] = parent_message_id
    mail["References"] = " ".join(references)
    mail["Auto-Submitted"] = "auto-replied"
    # Exchange and Outlook: send no out-of-office or read receipt back to this.
    mail["X-Auto-Response-Suppress"] = "All"
    mail[LOOP_HEADER] = instance_id
    mail.set_content(rendered.text)
    if rendered.html is not None:
        mail.add_alternative(rendered.html, subtype="html")
    return Composed(
        message_id=message_id,
        # Not the null sender RFC 3834 suggests: a bounce must come back to us, to be
        # matched to its outbox row and stop further mail to a dead address. A bounce
        # is never answered, so this cannot loop.
        mail_from=sender,
        recipient=recipient[0],
        subject=subject,
        in_reply_to=(parent_message_id,),
        references=references,
        text=rendered.text,
        html=rendered.html,
        raw=mail.as_bytes(policy=SMTP),
    )


def _address(address: str, name: str) -> str | HeaderAddress:
    if not name:
        return address
    local, _, domain = address.rpartition("@")
    return HeaderAddress(display_name=name, username=local, domain=domain)
