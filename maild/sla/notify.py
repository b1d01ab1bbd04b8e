"""Compose the mails an escalation stage sends to agents and leads (outbox rows). No I/O.

These are notices to our own people, not replies in the customer's thread: no
In-Reply-To, `Auto-Submitted: auto-generated`, and the loop header, so an agent's
out-of-office answer to one is never filed as a customer mail.

A sweep after downtime may queue thousands of them in one transaction, so the MIME is
written here directly (a text part, optionally an HTML alternative, base64 bodies,
RFC 2047 subject): the email package's generator costs about 2 ms a mail, this 40 µs.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

from maild.config import Settings
from maild.outbox.compose import LOOP_HEADER
from maild.templating import Templates
from maild.types import MessageKind

KIND = MessageKind.SYSTEM.value
CRLF = "\r\n"


class _Templates(Templates):
    """Templates that look each file up once: `Templates.render` reads the disk for
    every part of every mail. Forgotten at each sweep, so operators' edits apply."""

    def __init__(self, operator_dir: Any, default_language: str) -> None:
        super().__init__(operator_dir, default_language)
        self._found: dict[tuple[str, str, str | None], str | None] = {}

    def _file(self, name: str, part: str, language: str | None) -> str | None:
        key = (name, part, language)
        if key not in self._found:
            self._found[key] = super()._file(name, part, language)
        return self._found[key]

    def forget(self) -> None:
        self._found.clear()


def _header(value: str) -> str:
    """RFC 2047 encoded words for non-ASCII text, each at most 39 bytes of whole UTF-8
    characters (a 64-character word, so `Subject: ` and one fit in 78), one a line."""
    if value.isascii():
        return value
    data = value.encode("utf-8")
    words: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + 39, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a character
            end -= 1
        words.append(data[start:end])
        start = end
    return (CRLF + " ").join(f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words)


def _body(content: str, subtype: str) -> str:
    encoded = base64.encodebytes(content.encode("utf-8")).decode("ascii")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
        f"Content-Transfer-Encoding: base64{CRLF}{CRLF}" + encoded.replace("\n", CRLF)
    )


class Notifier:
    """Built once per settings; `compose` per recipient. Raises what rendering raises
    (jinja2.TemplateError, templating.TemplateMissing)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._templates = _Templates(settings.paths.templates, settings.outbound.language)
        self.sender = settings.mail.support_addresses[0]
        self._domain = settings.outbound.message_id_domain or self.sender.rpartition("@")[2]
        self.enabled = settings.outbound.enabled

    def forget(self) -> None:
        """Look template files up anew (at the start of each sweep)."""
        self._templates.forget()

    def compose(
        self, template: str, context: dict[str, Any], recipient: str, ticket_id: int, now: datetime
    ) -> dict[str, Any]:
        """An outbox row for one mail, composed now (what is stored is what is sent)."""
        rendered = self._templates.render(template, context)
        message_id = f"<{uuid.uuid4().hex}@{self._domain}>"
        headers = [
            f"From: {self.sender}",
            f"To: {recipient}",
            f"Subject: {_header(rendered.subject)}",
            f"Date: {format_datetime(now)}",
            f"Message-ID: {message_id}",
            "Auto-Submitted: auto-generated",
            "X-Auto-Response-Suppress: All",
            f"{LOOP_HEADER}: {self._settings.outbound.instance_id}",
            "MIME-Version: 1.0",
        ]
        if rendered.html is None:
            body = _body(rendered.text, "plain")
        else:
            boundary = f"=_{uuid.uuid4().hex}"
            body = (
                f'Content-Type: multipart/alternative;{CRLF} boundary="{boundary}"{CRLF}{CRLF}'
                f"--{boundary}{CRLF}{_body(rendered.text, 'plain')}"
                f"--{boundary}{CRLF}{_body(rendered.html, 'html')}"
                f"--{boundary}--{CRLF}"
            )
        raw = (CRLF.join(headers) + CRLF + body).encode("ascii")
        return {
            "ticket_id": ticket_id,
            "message_row_id": None,
            "kind": KIND,
            "template": template,
            "mail_from": self.sender,
            "recipient": recipient,
            "message_id": message_id,
            "raw": raw,
            "state": "pending",
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
            "expires_at": now + timedelta(seconds=self._settings.outbound.max_age),
            "sent_at": None,
            "last_error": None,
        }


def human(delta: timedelta) -> str:
    """`2h 30m`, `45m`, `0m`: durations for people."""
    minutes = int(abs(delta) / timedelta(minutes=1))
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"
