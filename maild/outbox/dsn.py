"""Read bounces: what an RFC 3464 report says (`read_report`), and whether a mail that is
not one is a bounce all the same (`looks_like_bounce`). Pure.

A DSN carries the original as a message/rfc822 part, or only its headers as
text/rfc822-headers; older MTAs quote it in the text. The Message-ID found there is
what outbox/bounce.py matches against the outbox.

Many MTAs still send non-delivery notices as plain text or multipart/mixed (qmail,
Exim, Domino, old Sendmail, mobile carriers), and a file import has no envelope to show
the null sender. Such a notice comes from a daemon-like sender and says it failed in
its subject or body, or carries the original. A no-reply sender must also carry the
original and say so, because shops send "delivery failed" notices about parcels.
"""

from __future__ import annotations

import re
from email import message_from_bytes
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32

from maild.types import BounceReport, ParsedMail

_DAEMON = re.compile(
    r"^(mailer[-_.]?daemon|post[-_.]?master|mail[-_.]?delivery[-_.]?(system|subsystem)"
    r"|mail[-_.]?daemon|mdaemon)$",
    re.IGNORECASE,
)
_NO_REPLY = re.compile(r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply)", re.IGNORECASE)
_SUBJECT = re.compile(
    r"undeliver|non[-\s]?deliver|delivery\s+(status|failure|failed|notification|problem)"
    r"|returned\s+(mail|to\s+sender)|failure\s+notice|mail\s+delivery|delivery\s+report"
    r"|mail\s+system\s+error|could\s+not\s+be\s+delivered|unzustellbar|non\s+remis"
    r"|kézbesíthetetlen|nem\s+kézbesíthető",
    re.IGNORECASE,
)
_BODY = re.compile(
    r"could\s+not\s+be\s+delivered|couldn't\s+be\s+delivered|undeliverable"
    r"|delivery\s+(to\s+the\s+following\s+recipients?\s+)?(has\s+)?failed"
    r"|permanent(ly)?\s+(fatal\s+)?(error|failure)|no\s+such\s+(user|mailbox)|user\s+unknown"
    r"|unknown\s+user|mailbox\s+(is\s+)?(full|unavailable)|requested\s+action\s+not\s+taken"
    r"|message\s+was\s+not\s+delivered|returned\s+to\s+sender|\b5\d\d[\s-]+5\.\d{1,3}\.\d{1,3}",
    re.IGNORECASE,
)
_ORIGINAL = {"message/rfc822", "text/rfc822-headers", "message/delivery-status"}
# Bounce wording sits at the top; a long body is a person's mail that quotes one.
_BODY_WINDOW = 4000


def is_delivery_report(content_type: str | None) -> bool:
    """A Content-Type of an RFC 3464 report (`multipart/report; report-type=delivery-status`)."""
    value = (content_type or "").lower()
    return "multipart/report" in value and "delivery-status" in value


def looks_like_bounce(mail: ParsedMail) -> bool:
    """True for a non-delivery notice that is not a multipart/report (those the caller
    recognises by their content type)."""
    if mail.header("x-failed-recipients") is not None:
        return True
    local = _sender_local_part(mail)
    # The wording is searched only for daemon-like senders: most mail is from people,
    # and the searches would be most of this function's cost for every mail.
    if _DAEMON.match(local) or _return_path_is_daemon(mail):
        return _carries_original(mail) or _says_failed(mail)
    if _NO_REPLY.match(local):
        return _carries_original(mail) and _says_failed(mail)
    return False


def _says_failed(mail: ParsedMail) -> bool:
    return bool(_SUBJECT.search(mail.subject) or _BODY.search(mail.text[:_BODY_WINDOW]))


def _carries_original(mail: ParsedMail) -> bool:
    return any(a.content_type.lower() in _ORIGINAL for a in mail.attachments)


def _sender_local_part(mail: ParsedMail) -> str:
    if mail.from_ is not None and mail.from_.address:
        return mail.from_.address.rpartition("@")[0] or mail.from_.address
    # `From: MAILER-DAEMON <>` has no address: only the display name is left.
    name = mail.from_.name if mail.from_ is not None else (mail.header("from") or "")
    return name.partition("<")[0].strip().strip('"').strip()


def _return_path_is_daemon(mail: ParsedMail) -> bool:
    value = (mail.header("return-path") or "").strip().strip("<>").strip()
    if not value:
        # An empty Return-Path header is the null sender, written by the final MTA.
        return mail.header("return-path") is not None
    return bool(_DAEMON.match(value.rpartition("@")[0] or value))


_ORIGINAL_PARTS = {"message/rfc822", "text/rfc822-headers", "message/rfc822-headers"}
_QUOTED_ID = re.compile(rb"^\s*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)


def read_report(raw: bytes) -> BounceReport:
    """Pure: the original Message-IDs and the per-recipient status of a bounce."""
    message = message_from_bytes(raw, policy=compat32)
    ids: list[str] = []
    recipient = status = diagnostic = action = None
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type in _ORIGINAL_PARTS:
            ids += _original_ids(part)
        elif content_type == "message/delivery-status":
            for block in _blocks(part):
                recipient = recipient or _address(block.get("Final-Recipient"))
                recipient = recipient or _address(block.get("Original-Recipient"))
                status = status or _clean(block.get("Status"))
                diagnostic = diagnostic or _clean(block.get("Diagnostic-Code"))
                action = action or _clean(block.get("Action"))
    if not ids:
        # No structured original: a quoted header block in the text (qmail, Exim, old Sendmail).
        # The first Message-ID header is the DSN's own; the quoted one comes after.
        ids = [m.decode("ascii", "replace") for m in _QUOTED_ID.findall(raw)][1:]
    return BounceReport(tuple(dict.fromkeys(ids)), recipient, status, diagnostic, action)


def _original_ids(part: Message) -> list[str]:
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822, parsed: one inner message
        inner = [m for m in payload if isinstance(m, Message)]
        return [str(m["Message-ID"]).strip() for m in inner if m["Message-ID"]]
    text = payload if isinstance(payload, str) else ""
    headers = HeaderParser(policy=compat32).parsestr(text)
    return [str(headers["Message-ID"]).strip()] if headers["Message-ID"] else []


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    return [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []


def _address(value: object) -> str | None:
    """`rfc822; alice@example.org` -> `alice@example.org`."""
    if value is None:
        return None
    text = str(value).rpartition(";")[2].strip().strip("<>").lower()
    return text or None


def _clean(value: object) -> str | None:
    if value is None:
        return None
    return " ".join(str(value).split()) or None
