"""Hostile attachment file names are stored as safe display names, never as paths."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from maild.app import App
from maild.db.models import Attachment
from maild.pipeline.parse import parse
from maild.types import SpoolState
from tests.conftest import deliver

HEAD = (
    b"From: Mallory <mallory@customer.example>\r\nTo: support@example.com\r\n"
    b"Subject: Files\r\nDate: Mon, 02 Mar 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    b"Message-ID: <files@customer.example>\r\n"
    b'Content-Type: multipart/mixed; boundary="F"\r\n\r\n'
    b"--F\r\nContent-Type: text/plain\r\n\r\nSee the files.\r\n"
)

# The Content-Disposition parameter as sent, and the name kept.
NAMES: list[tuple[str, str]] = [
    ('filename="../../etc/passwd"', "passwd"),
    ('filename="..\\\\..\\\\Windows\\\\system32\\\\evil.txt"', "evil.txt"),
    ('filename="/abs/path/report.pdf"', "report.pdf"),
    ("filename*=utf-8''..%2F..%2Fetc%2Fshadow", "shadow"),
    ("filename*=utf-8''in%00voice%00.pdf", "invoice.pdf"),
    ("filename*=utf-8''bell%07%1B%5B31m.txt", "bell[31m.txt"),
    ("filename*=utf-8''photo%E2%80%AEfdp.txt", "photofdp.txt"),
    ('filename="CON"', "_CON"),
    ('filename="nul.txt"', "_nul.txt"),
    ('filename="Com1.tar.gz"', "_Com1.tar.gz"),
    ('filename="lpt9 .log"', "_lpt9 .log"),
    ('filename="trailing dots..."', "trailing dots"),
    ('filename=".."', "attachment-13.bin"),
    ('filename="."', "attachment-14.bin"),
    ('filename=""', "attachment-15.bin"),
    ('filename="dir/"', "attachment-16.bin"),
    ("filename*=utf-8''%00%01%02", "attachment-17.bin"),
    ('filename="console.txt"', "console.txt"),
    ('filename="Invoice: March.pdf"', "Invoice: March.pdf"),
]


def hostile_mail() -> bytes:
    parts = [
        b"--F\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; " + param.encode() + b"\r\n\r\ndata\r\n"
        for param, _ in NAMES
    ]
    return HEAD + b"".join(parts) + b"--F--\r\n"


_SAFE = re.compile(r"[^/\\\x00-\x1f\x7f-\x9f\u202e]+")


def test_parse_keeps_a_safe_display_name_for_each() -> None:
    parsed = parse(hostile_mail())
    assert [a.filename for a in parsed.attachments] == [kept for _, kept in NAMES]
    assert "filename: made safe" in parsed.defects
    assert "filename: unusable, replaced" in parsed.defects


def test_hostile_names_are_stored_safely(app: App) -> None:
    outcome = deliver(app, hostile_mail())
    assert outcome.state is SpoolState.DONE
    with app.db.transaction() as session:
        stored = session.scalars(select(Attachment.filename).order_by(Attachment.id)).all()
    assert stored == [kept for _, kept in NAMES]
    for name in stored:
        assert _SAFE.fullmatch(name), name
        assert name not in (".", "..")
        assert name.split(".", 1)[0].strip().lower() not in ("con", "nul", "com1", "lpt9")


@pytest.mark.parametrize("length", [300, 5000])
def test_long_names_are_cut_keeping_the_extension(length: int) -> None:
    raw = HEAD + (
        b'--F\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="'
        + b"a" * length
        + b'.pdf"\r\n\r\ndata\r\n--F--\r\n'
    )
    (attachment,) = parse(raw).attachments
    assert len(attachment.filename) == 255
    assert attachment.filename.endswith("a.pdf")
