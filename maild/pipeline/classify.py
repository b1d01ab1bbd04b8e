"""Classify: human, auto-reply, bounce or bulk. Pure; reads headers and the envelope."""

from __future__ import annotations

from maild.outbox.dsn import is_delivery_report, looks_like_bounce
from maild.types import Envelope, MailClass, ParsedMail

_AUTO_SUPPRESS_VALUES = {"all", "oof"}
_BULK_PRECEDENCE = {"bulk", "junk", "list"}


def classify(mail: ParsedMail, envelope: Envelope) -> MailClass:
    """Bounces first (a DSN is also 'auto-submitted'), then auto-replies, then bulk."""
    if _is_bounce(mail, envelope):
        return MailClass.BOUNCE
    if _is_auto_reply(mail):
        return MailClass.AUTO_REPLY
    if _is_bulk(mail):
        return MailClass.BULK
    return MailClass.HUMAN


def _is_bounce(mail: ParsedMail, envelope: Envelope) -> bool:
    if is_delivery_report(mail.header("content-type")) or looks_like_bounce(mail):
        return True
    # A file import has no envelope; the Return-Path the final MTA wrote stands in for it.
    null_sender = envelope.mail_from == "" or (
        envelope.mail_from is None and (mail.header("return-path") or "").strip() == "<>"
    )
    # RFC 3834 asks auto-responders to send from the null sender too: an out-of-office
    # from <> is an auto-reply, not a bounce.
    return null_sender and not _is_auto_reply(mail)


def _is_auto_reply(mail: ParsedMail) -> bool:
    # Abuse feedback (ARF) and read receipts (MDN) are machine reports like DSNs.
    if "multipart/report" in (mail.header("content-type") or "").lower():
        return True
    auto_submitted = (mail.header("auto-submitted") or "").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return True
    if mail.header("x-autoreply") is not None or mail.header("x-autorespond") is not None:
        return True
    suppress = {
        token.strip().lower()
        for token in (mail.header("x-auto-response-suppress") or "").split(",")
    }
    if suppress & _AUTO_SUPPRESS_VALUES:
        return True
    return (mail.header("precedence") or "").strip().lower() == "auto_reply"


def _is_bulk(mail: ParsedMail) -> bool:
    if (mail.header("precedence") or "").strip().lower() in _BULK_PRECEDENCE:
        return True
    return mail.header("list-id") is not None
