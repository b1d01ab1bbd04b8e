"""Size and shape limits on incoming mail, checked by the parse step.

A mail past a limit is quarantined with a reason naming the `[mail]` key and the value
seen, before the later steps spend time on it. Every check runs on every mail, so each
is a count or a sum over what the email package built, or a scan of the raw bytes in C;
none decodes or copies anything (about 11 us a mail, 1% of the parse step).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from typing import Final, NoReturn

from maild.config import MailSettings
from maild.errors import Quarantine
from maild.types import ParsedAttachment

__all__ = ["DEFAULT_LIMITS", "MailLimits"]

STEP: Final = "parse"


@dataclass(frozen=True, slots=True)
class MailLimits:
    """The `[mail]` limits and the parse time bound; a plain value, so parse-ahead
    processes can take it along."""

    max_header_fields: int
    max_header_bytes: int
    max_mime_depth: int
    max_mime_parts: int
    max_attachments: int
    max_attachment_bytes: int
    max_line_length: int
    max_parse_seconds: float

    @classmethod
    def of(cls, mail: MailSettings) -> MailLimits:
        return cls(
            max_header_fields=mail.max_header_fields,
            max_header_bytes=mail.max_header_bytes,
            max_mime_depth=mail.max_mime_depth,
            max_mime_parts=mail.max_mime_parts,
            max_attachments=mail.max_attachments,
            max_attachment_bytes=mail.max_attachment_bytes,
            max_line_length=mail.max_line_length,
            max_parse_seconds=mail.max_parse_seconds,
        )

    def check_raw(self, raw: bytes) -> None:
        """Line length, on the bytes before they are parsed."""
        longest = _line_longer_than(raw, self.max_line_length)
        if longest is not None:
            _breach("line of", longest, "bytes", "max_line_length", self.max_line_length)

    def check_message(self, message: Message) -> None:
        """Header count and size of the top level; MIME depth and part count of the tree."""
        fields = len(message)
        if fields > self.max_header_fields:
            _breach("", fields, "header fields", "max_header_fields", self.max_header_fields)
        size = sum(len(name) + len(str(value)) + 2 for name, value in message.raw_items())
        if size > self.max_header_bytes:
            _breach("headers of", size, "bytes", "max_header_bytes", self.max_header_bytes)
        # Attached messages count too: the email package parsed them all the same.
        parts = deepest = 0
        stack: list[tuple[Message, int]] = [(message, 0)]
        while stack:
            part, depth = stack.pop()
            parts += 1
            deepest = max(deepest, depth)
            # Only a container's payload: a leaf's get_payload() decodes it (a copy of
            # the whole body, and a TypeError from the email package on an RFC 2231
            # charset parameter).
            if part.is_multipart():
                children = part.get_payload()
                stack.extend((child, depth + 1) for child in children if isinstance(child, Message))
        if deepest > self.max_mime_depth:
            _breach("MIME nesting", deepest, "levels deep", "max_mime_depth", self.max_mime_depth)
        if parts > self.max_mime_parts:
            _breach("", parts, "MIME parts", "max_mime_parts", self.max_mime_parts)

    def check_attachments(self, attachments: Iterable[ParsedAttachment]) -> None:
        """Count and total decoded size of the attachments (inline images included)."""
        count = total = 0
        for attachment in attachments:
            count += 1
            total += attachment.size
        if count > self.max_attachments:
            _breach("", count, "attachments", "max_attachments", self.max_attachments)
        if total > self.max_attachment_bytes:
            _breach(
                "attachments of", total, "bytes", "max_attachment_bytes", self.max_attachment_bytes
            )


def _breach(before: str, seen: int, unit: str, key: str, limit: int) -> NoReturn:
    what = f"{before} {seen} {unit}".strip()
    raise Quarantine(STEP, f"limit exceeded: {what} (mail.{key} = {limit})")


def _line_longer_than(raw: bytes, limit: int) -> int | None:
    """The length of the first line longer than `limit` bytes, its line end included
    (as RFC 5321 counts), or None.

    Looks for the last LF within each window of `limit` bytes: a window without one
    holds part of a long line. So the scan moves in steps of about `limit` bytes, in C,
    instead of visiting every line in Python.
    """
    end = len(raw)
    position = 0
    while end - position > limit:
        newline = raw.rfind(b"\n", position, position + limit)
        if newline < 0:
            line_end = raw.find(b"\n", position)
            return (end if line_end < 0 else line_end + 1) - position
        position = newline + 1
    return None


DEFAULT_LIMITS: Final = MailLimits.of(MailSettings())
