"""Ticket numbers and the subject tag that carries them, from the [tickets] settings."""

from __future__ import annotations

import re
from datetime import datetime

from maild.config import TicketSettings


class Numbering:
    """Renders numbers from a sequence and finds tags in subjects. Built once per settings."""

    def __init__(self, settings: TicketSettings) -> None:
        self._settings = settings
        prefix, _, suffix = settings.tag_format.partition("{number}")
        self._tag = re.compile(
            re.escape(prefix) + r"\s*(?P<number>[A-Za-z0-9-]+?)\s*" + re.escape(suffix),
            re.IGNORECASE,
        )

    def number(self, seq: int, created_at: datetime) -> str:
        return self._settings.number_format.format(
            seq=seq + self._settings.number_offset, date=created_at
        )

    def tag(self, number: str) -> str:
        return self._settings.tag_format.replace("{number}", number)

    def numbers_in(self, subject: str) -> list[str]:
        """Every ticket number tagged in the subject, in order of appearance."""
        return [match.group("number") for match in self._tag.finditer(subject)]

    def with_tag(self, subject: str, number: str) -> str:
        """The subject with the ticket's tag, added once."""
        tag = self.tag(number)
        return subject if tag.lower() in subject.lower() else f"{subject} {tag}".strip()
