"""What rules can see of one mail. Every value is computed at most once per mail."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import getaddresses
from typing import Literal, Protocol

from maild.rules.literals import fold
from maild.types import Envelope, MailClass, ParsedAttachment, ParsedMail

SenderKind = Literal["agent", "customer", "unknown"]
SENDER_KINDS: tuple[SenderKind, ...] = ("agent", "customer", "unknown")

HEADER_PREFIX = "header:"


class OpeningHours(Protocol):
    """A calendar of rules/sla.yaml, as `business_hours` conditions ask it."""

    def is_open(self, instant: datetime) -> bool: ...


class MailFacts:
    """One mail as rules see it: text values by field name, cached on first use.

    Field names: from, from_name, from_domain, to, cc, delivered_to (Delivered-To and
    X-Original-To headers, envelope recipients, the address the mail came in on),
    recipient (all of those), subject, body (the new text, quoted history stripped),
    body_full, class, is_reply, sender_is, business_hours (the calendars open when the
    mail arrived), and `header:<name>` for any header. Every field is a tuple of
    strings, empty when the mail has no such value.
    """

    __slots__ = (
        "_folded",
        "_values",
        "calendars",
        "came_in_on",
        "envelope",
        "is_reply",
        "mail",
        "mail_class",
        "received_at",
        "sender_is",
    )

    def __init__(
        self,
        mail: ParsedMail,
        envelope: Envelope,
        *,
        mail_class: MailClass,
        is_reply: bool,
        sender_is: SenderKind,
        came_in_on: str | None = None,
        received_at: datetime | None = None,
        calendars: Mapping[str, OpeningHours] | None = None,
    ) -> None:
        self.mail = mail
        self.envelope = envelope
        self.mail_class = mail_class
        self.is_reply = is_reply
        self.sender_is = sender_is
        self.came_in_on = came_in_on
        self.received_at = received_at
        self.calendars = calendars or {}
        self._values: dict[str, tuple[str, ...]] = {}
        self._folded: dict[str, tuple[str, ...]] = {}

    @property
    def attachments(self) -> tuple[ParsedAttachment, ...]:
        return self.mail.attachments

    def values(self, field: str) -> tuple[str, ...]:
        """The field's values as the mail has them (for regexes and for showing)."""
        found = self._values.get(field)
        if found is None:
            found = self._values[field] = _extract(self, field)
        return found

    def folded(self, field: str) -> tuple[str, ...]:
        """The field's values in `fold`ed form (for every other comparison)."""
        found = self._folded.get(field)
        if found is None:
            found = self._folded[field] = tuple(fold(v) for v in self.values(field))
        return found


def _address(raw: str) -> str:
    return raw.strip().strip("<>").strip().lower()


_BARE_ADDRESS = re.compile(r"\s*<?([^\s<>@,;\"]+@[^\s<>@,;\"]+)>?\s*")


def _header_addresses(facts: MailFacts, *names: str) -> tuple[str, ...]:
    found: list[str] = []
    for name in names:
        for value in facts.mail.headers.get(name, ()):
            # Delivered-To and X-Original-To hold one bare address; the full address
            # parser is for anything else (and costs more than all the rules' lookups).
            bare = _BARE_ADDRESS.fullmatch(value)
            if bare is not None:
                found.append(bare.group(1).lower())
            else:
                found += [a.lower() for _, a in getaddresses([value]) if a]
    return tuple(found)


def _unique(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


def _from(facts: MailFacts) -> tuple[str, ...]:
    sender = facts.mail.from_
    return (sender.address,) if sender and sender.address else ()


def _from_name(facts: MailFacts) -> tuple[str, ...]:
    sender = facts.mail.from_
    return (sender.name,) if sender and sender.name else ()


def _from_domain(facts: MailFacts) -> tuple[str, ...]:
    return tuple(a.rpartition("@")[2] for a in facts.values("from") if "@" in a)


def _delivered_to(facts: MailFacts) -> tuple[str, ...]:
    found = list(_header_addresses(facts, "delivered-to", "x-original-to"))
    found += [_address(r) for r in facts.envelope.rcpt_to]
    if facts.came_in_on:
        found.append(_address(facts.came_in_on))
    return _unique(found)


def _business_hours(facts: MailFacts) -> tuple[str, ...]:
    at = facts.received_at
    if at is None:
        return ()
    return tuple(name for name, calendar in facts.calendars.items() if calendar.is_open(at))


def _recipient(facts: MailFacts) -> tuple[str, ...]:
    return _unique([*facts.values("to"), *facts.values("cc"), *facts.values("delivered_to")])


_FIELDS: dict[str, Callable[[MailFacts], tuple[str, ...]]] = {
    "from": _from,
    "from_name": _from_name,
    "from_domain": _from_domain,
    "to": lambda f: _unique([a.address for a in f.mail.to]),
    "cc": lambda f: _unique([a.address for a in f.mail.cc]),
    "delivered_to": _delivered_to,
    "recipient": _recipient,
    "subject": lambda f: (f.mail.subject,) if f.mail.subject else (),
    "body": lambda f: (f.mail.text_stripped,) if f.mail.text_stripped else (),
    "body_full": lambda f: (f.mail.text,) if f.mail.text else (),
    "class": lambda f: (f.mail_class.value,),
    "is_reply": lambda f: ("true" if f.is_reply else "false",),
    "sender_is": lambda f: (f.sender_is,),
    "business_hours": _business_hours,
}

FIELD_NAMES = frozenset(_FIELDS)


def _extract(facts: MailFacts, field: str) -> tuple[str, ...]:
    if field.startswith(HEADER_PREFIX):
        return tuple(v for v in facts.mail.headers.get(field[len(HEADER_PREFIX) :], ()) if v)
    return _FIELDS[field](facts)
