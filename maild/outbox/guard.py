"""Loop and abuse protection: may this mail be answered automatically? Pure; no I/O.

RFC 3834 section 2 is the contract: never answer automatic mail (auto-replies, bounces,
lists), and never answer the same recipient without limit. The counts come from the
outbox and the bouncing addresses (`Recent`), so the check survives restarts and works
across instances.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from maild.config import OutboundSettings
from maild.outbox.compose import LOOP_HEADER
from maild.types import Envelope, MailClass, ParsedMail

# Label values of the suppression metric; each names one rule below.
RefusalCode = Literal[
    "auto_reply",
    "bounce",
    "bulk",
    "null_sender",
    "no_reply",
    "own_address",
    "loop_header",
    "bouncing",
    "rate_recipient",
    "rate_ticket",
]

_CLASS_CODES: dict[MailClass, RefusalCode] = {
    MailClass.AUTO_REPLY: "auto_reply",
    MailClass.BOUNCE: "bounce",
    MailClass.BULK: "bulk",
}


@dataclass(frozen=True, slots=True)
class RecentMail:
    """What the database knows about one recipient and ticket just now."""

    last_hour: int
    last_day: int
    # Automatic replies queued on the ticket in the last day.
    ticket_last_day: int = 0
    # The recipient bounced our mail; no automatic mail before this.
    bouncing_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    code: RefusalCode
    reason: str


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
        now: datetime,
    ) -> Refusal | None:
        """Why `mail` must not be answered automatically at `recipient`; None if it may."""
        if mail_class is not MailClass.HUMAN:
            return Refusal(
                _CLASS_CODES[mail_class], f"{mail_class.value} mail is never answered automatically"
            )
        if envelope.mail_from == "" or not recipient or "@" not in recipient:
            return Refusal("null_sender", "null sender")
        local = recipient.rpartition("@")[0]
        for pattern in self._no_reply:
            if pattern.search(local):
                return Refusal(
                    "no_reply", f"no-reply sender {recipient} (pattern {pattern.pattern!r})"
                )
        if self._is_own(recipient):
            return Refusal("own_address", f"our own address {recipient}")
        if mail.header(LOOP_HEADER) is not None:
            # Ours or another maild's: either way an automatic mail, and answering it loops.
            return Refusal("loop_header", f"carries {LOOP_HEADER}: {mail.header(LOOP_HEADER)}")
        return self.limit(recipient, recent, now)

    def limit(self, recipient: str, recent: RecentMail, now: datetime) -> Refusal | None:
        """The checks that apply to every automatic mail, whatever caused it: a bouncing
        address and the rate limits."""
        s = self._settings
        if recent.bouncing_until is not None and recent.bouncing_until > now:
            until = recent.bouncing_until.isoformat()
            return Refusal("bouncing", f"{recipient} bounced our mail; suppressed until {until}")
        if recent.last_hour >= s.max_per_hour:
            return Refusal(
                "rate_recipient",
                f"rate limit: {recent.last_hour} automatic mails to {recipient} in an hour",
            )
        if recent.last_day >= s.max_per_day:
            return Refusal(
                "rate_recipient",
                f"rate limit: {recent.last_day} automatic mails to {recipient} in a day",
            )
        if recent.ticket_last_day >= s.max_per_ticket:
            return Refusal(
                "rate_ticket",
                f"rate limit: {recent.ticket_last_day} automatic mails on this ticket in a day",
            )
        return None
