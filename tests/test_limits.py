"""Limits on incoming mail: a mail past one is quarantined, naming the limit and the value seen."""

from __future__ import annotations

import base64
import email
import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from maild.app import App
from maild.cli import EX_OK, main
from maild.config import parse_settings
from maild.db.models import SpoolEntry
from maild.errors import ConfigError, Quarantine
from maild.pipeline.limits import DEFAULT_LIMITS, MailLimits
from maild.pipeline.parse import parse
from maild.pipeline.parse_ahead import ParseAhead
from maild.types import SpoolState
from tests.conftest import CORPUS_DEV, AppFactory, deliver, make_mail, need_corpus

HEAD = (
    b"From: Alice <alice@customer.example>\r\nTo: support@example.com\r\n"
    b"Subject: Limits\r\nDate: Mon, 02 Mar 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
)


def _id(tag: str) -> bytes:
    return f"Message-ID: <{tag}@customer.example>\r\n".encode()


def _fields(raw: bytes) -> int:
    return len(email.message_from_bytes(raw))


def with_fields(extra: int) -> bytes:
    headers = {f"X-Extra-{i}": "v" for i in range(extra)}
    return make_mail(headers=headers)


def with_header_bytes(size: int) -> bytes:
    """Header fields of `size` bytes counted as 'Name: value', line ends not counted."""
    base = make_mail(message_id="<hb@customer.example>")
    message = email.message_from_bytes(base)
    used = sum(len(f"{name}: {value}") for name, value in message.raw_items())
    padding = size - used - len("X-Pad: ")
    return b"X-Pad: " + b"p" * padding + b"\r\n" + base


def _multipart(boundary: str, parts: list[bytes]) -> bytes:
    out = [f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()]
    for part in parts:
        out += [f"--{boundary}\r\n".encode(), part, b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


TEXT_PART = b"Content-Type: text/plain\r\n\r\nHello, the printer is on fire.\r\n"


def nested(levels: int) -> bytes:
    """A text part `levels` multiparts deep."""
    entity = TEXT_PART
    for level in range(levels):
        entity = _multipart(f"b{level}", [entity])
    return HEAD + _id(f"depth{levels}") + entity


def with_parts(count: int) -> bytes:
    """`count` MIME parts in all: the multipart and its text children."""
    return HEAD + _id(f"parts{count}") + _multipart("p", [TEXT_PART] * (count - 1))


def _attachment(name: str, data: bytes) -> bytes:
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (
        b"Content-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="' + name.encode() + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    )


def with_attachments(count: int) -> bytes:
    parts = [TEXT_PART] + [_attachment(f"f{i}.bin", b"x") for i in range(count)]
    return HEAD + _id(f"att{count}") + _multipart("a", parts)


def with_attachment_bytes(total: int) -> bytes:
    half = total // 2
    parts = [
        TEXT_PART,
        _attachment("a.bin", b"a" * half),
        _attachment("b.bin", b"b" * (total - half)),
    ]
    return HEAD + _id(f"attb{total}") + _multipart("a", parts)


def with_line(length: int) -> bytes:
    """A body line of `length` bytes, its CRLF included."""
    return (
        HEAD
        + _id(f"line{length}")
        + b"Content-Type: text/plain\r\n\r\nHello,\r\n"
        + b"x" * (length - 2)
        + b"\r\n"
    )


BASE_FIELDS = _fields(with_fields(0))

# key, limit, builder of a mail whose measure is its argument, reason when one over
CASES: list[tuple[str, int, Callable[[int], bytes], str]] = [
    (
        "max_header_fields",
        BASE_FIELDS + 10,
        lambda n: with_fields(n - BASE_FIELDS),
        "{n} header fields",
    ),
    ("max_header_bytes", 4000, with_header_bytes, "headers of {n} bytes"),
    ("max_mime_depth", 5, nested, "MIME nesting {n} levels deep"),
    ("max_mime_parts", 20, with_parts, "{n} MIME parts"),
    ("max_attachments", 6, with_attachments, "{n} attachments"),
    ("max_attachment_bytes", 3000, with_attachment_bytes, "attachments of {n} bytes"),
    ("max_line_length", 1000, with_line, "line of {n} bytes"),
]


@pytest.mark.parametrize(("key", "limit", "build", "what"), CASES, ids=[c[0] for c in CASES])
def test_mail_at_a_limit_is_ticketed_and_one_past_it_quarantined(
    make_app: AppFactory, key: str, limit: int, build: Callable[[int], bytes], what: str
) -> None:
    app = make_app(mail={key: limit})
    at_limit = deliver(app, build(limit))
    assert at_limit.state is SpoolState.DONE, at_limit
    over = deliver(app, build(limit + 1))
    assert over.state is SpoolState.QUARANTINED
    assert over.step == "parse"
    assert over.reason == f"limit exceeded: {what.format(n=limit + 1)} (mail.{key} = {limit})"


def test_the_limit_reason_is_kept_on_the_spool_row(make_app: AppFactory) -> None:
    app = make_app(mail={"max_mime_depth": 3})
    outcome = deliver(app, nested(9))
    with app.db.transaction() as session:
        row = session.get(SpoolEntry, outcome.spool_id)
        assert row is not None
        assert (row.state, row.step) == (SpoolState.QUARANTINED, "parse")
        assert row.reason == "limit exceeded: MIME nesting 9 levels deep (mail.max_mime_depth = 3)"
        # The listing columns are still filled in from the headers.
        assert row.header_message_id == "<depth9@customer.example>"


def test_defaults_let_the_whole_dev_corpus_through() -> None:
    """The defaults are far above real mail: no corpus mail is past one (parse only)."""
    need_corpus(CORPUS_DEV)
    seen = 0
    for path in sorted(CORPUS_DEV.rglob("*")):
        if not path.is_file() or path.suffix in (".tsv", ".txt", ".md"):
            continue
        try:
            parse(path.read_bytes())
        except Quarantine as exc:
            assert not exc.reason.startswith("limit exceeded"), (path, exc.reason)
        seen += 1
    assert seen > 100


@pytest.mark.parametrize(
    ("raw", "limit", "expected"),
    [
        (b"", 10, None),
        (b"abcdefghi\n", 10, None),  # 10 bytes with its LF
        (b"abcdefghij\n", 10, 11),
        (b"abcdefghij", 10, None),  # no line end: 10 bytes
        (b"abcdefghijk", 10, 11),
        (b"ab\n" * 100 + b"c" * 30 + b"\r\n" + b"d\n", 10, 32),
        (b"ab\r\n" * 1000, 4, None),
        (b"ab\r\n" * 1000, 3, 4),
    ],
)
def test_line_length_counts_bytes_with_the_line_end(
    raw: bytes, limit: int, expected: int | None
) -> None:
    limits = replace(DEFAULT_LIMITS, max_line_length=limit)
    if expected is None:
        limits.check_raw(raw)
        return
    with pytest.raises(Quarantine) as caught:
        limits.check_raw(raw)
    assert caught.value.reason == (
        f"limit exceeded: line of {expected} bytes (mail.max_line_length = {limit})"
    )


def test_parse_ahead_applies_the_configured_limits() -> None:
    """`maild ingest` parses in worker processes: they get the operator's limits."""
    limits = replace(DEFAULT_LIMITS, max_mime_parts=5)
    ahead: ParseAhead[str] = ParseAhead(workers=1, limits=limits)
    try:
        results = dict(
            [*ahead.submit(["small", "big"], [with_parts(5), with_parts(6)]), *ahead.finish()]
        )
    finally:
        ahead.close()
    assert not isinstance(results["small"], Exception)
    assert isinstance(results["big"], Quarantine)
    assert results["big"].reason == "limit exceeded: 6 MIME parts (mail.max_mime_parts = 5)"


def test_limits_come_from_the_mail_section() -> None:
    settings = parse_settings({"mail": {"max_attachments": 3}}, source="config.toml")
    assert MailLimits.of(settings.mail) == replace(DEFAULT_LIMITS, max_attachments=3)
    with pytest.raises(ConfigError) as caught:
        parse_settings({"mail": {"max_line_length": 0}}, source="config.toml")
    assert "max_line_length" in str(caught.value)


def test_nul_in_message_ids_still_makes_a_ticket(app: App) -> None:
    """A NUL in an id used to break the dedupe query on PostgreSQL (found by test_fuzz)."""
    raw = (
        HEAD
        + b"Message-ID: <a\x00b@customer.example>\r\nIn-Reply-To: <c\x00d@x.example>\r\n"
        + b"References: <e\x00f@x.example>\r\n\r\nHello\r\n"
    )
    outcome = deliver(app, raw)
    assert outcome.state is SpoolState.DONE, outcome
    assert parse(raw).message_id == "<a\ufffdb@customer.example>"


def test_a_quarantined_mail_with_nul_in_its_headers_is_recorded(make_app: AppFactory) -> None:
    """The listing columns of an unparseable mail come from its raw headers: NUL and all."""
    app = make_app(mail={"max_line_length": 100})
    raw = (
        b"From: a\x00b@customer.example\r\nSubject: nul\x00here\r\n"
        b"Message-ID: <n\x00ul@customer.example>\r\n\r\n" + b"z" * 200 + b"\r\n"
    )
    outcome = deliver(app, raw)
    assert outcome.state is SpoolState.QUARANTINED
    with app.db.transaction() as session:
        row = session.get(SpoolEntry, outcome.spool_id)
        assert row is not None
        assert row.reason == "limit exceeded: line of 202 bytes (mail.max_line_length = 100)"
        assert row.header_subject == "nul\ufffdhere"


def test_ingest_uses_the_configured_limits_and_retry_after_raising_one(
    tmp_path: Path, db_url: str
) -> None:
    """`maild ingest` (parsing ahead in worker processes) quarantines by the operator's
    limits; once the limit is raised, `maild quarantine retry` files the mail."""
    config = tmp_path / "config.toml"
    mail = tmp_path / "parts.eml"
    mail.write_bytes(with_parts(6))

    def write_config(parts: int) -> None:
        config.write_text(f'[database]\nurl = "{db_url}"\n[mail]\nmax_mime_parts = {parts}\n')

    def run(*argv: str) -> str:
        out = io.StringIO()
        assert main([*argv, "--config", str(config)], stdout=out) == EX_OK
        return out.getvalue()

    write_config(5)
    assert "quarantined 1" in run("ingest", str(mail))
    (item,) = json.loads(run("quarantine", "list", "--json"))
    assert (item["step"], item["reason"]) == (
        "parse",
        "limit exceeded: 6 MIME parts (mail.max_mime_parts = 5)",
    )
    write_config(6)
    assert "done 1" in run("quarantine", "retry", str(item["id"]))
