"""Loop and abuse protection: may this mail be answered automatically? Pure; no I/O.

RFC 3834 section 2 is the contract: never answer automatic mail (auto-replies, bounces,
lists), and never answer the same recipient without limit. The rate counts come from
the outbox (`sent_last_hour`, `sent_last_day`), so the check survives restarts and works
across instances.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from maild.config import OutboundSettings
from maild.outbox.compose import LOOP_HEADER
from maild.types import Envelope, MailClass, ParsedMail


@dataclass(frozen=True, slots=True)
class RecentMail:
    """Automatic mails already queued to one recipient."""

    last_hour: int
    last_day: int


class Guard:
    """Built once per settings: the sender patterns compile here, not per mail."""

    def __init__(self, settings: OutboundSettings, is_own_address: Callable[[str], bool]) -> None:
        self._settings = settings
        self._is_own = is_own_address
        self._no_reply = [re.compile(p, re.IGNORECASE) for p in settings.no_reply_patterns]

    def refusal(
        self,
        mail: ParsedMail,
        mail_class: MailClass,
        envelope: Envelope,
        recipient: str,
        recent: RecentMail,
    ) -> str | None:
        """Why `mail` must not be answered automatically at `recipient`; None if it may."""
        if mail_class is not MailClass.HUMAN:
            return f"{mail_class.value} mail is never answered automatically"
        if envelope.mail_from == "" or not recipient or "@" not in recipient:
            return "null sender"
        local = recipient.rpartition("@")[0]
        for pattern in self._no_reply:
            if pattern.search(local):
                return f"no-reply sender {recipient} (pattern {pattern.pattern!r})"
        if self._is_own(recipient):
            return f"our own address {recipient}"
        if mail.header(LOOP_HEADER) is not None:
            # Ours or another maild's: either way an automatic mail, and answering it loops.
            return f"carries {LOOP_HEADER}: {mail.header(LOOP_HEADER)}"
        if recent.last_hour >= self._settings.max_per_hour:
            return f"rate limit: {recent.last_hour} automatic mails to {recipient} in an hour"
        if recent.last_day >= self._settings.max_per_day:
            return f"rate limit: {recent.last_day} automatic mails to {recipient} in a day"
        return None
