"""The parse step on real bytes: fixtures in tests/data/parse and the shared corpus."""

from __future__ import annotations

import base64
import hashlib
import random
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mailparser_reply.parser import EmailMessage

from maild.errors import Quarantine
from maild.pipeline.limits import DEFAULT_LIMITS
from maild.pipeline.parse import parse
from maild.pipeline.text import (
    _REPLY_TEMPLATE,
    decode_text,
    html_to_text,
    newest_reply,
    strip_reply,
)
from maild.types import Address, ParsedMail
from tests.conftest import CORPUS_DEV, bench_corpus, need_corpus

DATA = Path(__file__).parent / "data" / "parse"
CORPUS = CORPUS_DEV
HU = "árvíztűrő tükörfúrógép"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def parse_file(name: str) -> ParsedMail:
    return parse(load(name))


def mail(body: bytes, headers: bytes = b"", mime: bytes = b"") -> bytes:
    """A small mail: `headers` go before the standard header fields, `mime` after them."""
    return (
        headers + b"From: a@example.com\n"
        b"To: help@example.com\n"
        b"Subject: test\n"
        b"Date: Fri, 05 Jan 2024 10:00:00 +0100\n"
        b"Message-ID: <test@example.com>\n" + mime + b"\n" + body
    )


# --- charsets ---------------------------------------------------------------------------


def test_latin2_body_declared_utf8_and_raw_latin2_headers() -> None:
    parsed = parse_file("latin2-declared-utf8.eml")
    assert f"A nyomtató nem működik: {HU}." in parsed.text
    assert parsed.text.startswith("Tisztelt Ügyfélszolgálat!")
    assert parsed.subject == "Nyomtató hiba"
    assert parsed.from_ == Address("kovacs@example.hu", "Kovács János")
    assert any(d.startswith("text/plain: charset: not utf-8") for d in parsed.defects)
    assert any(d.startswith("headers: 8-bit text read as") for d in parsed.defects)


def test_windows1250_undeclared() -> None:
    parsed = parse_file("windows1250-undeclared.eml")
    assert parsed.text == f"Szia!\n\nŐszintén szólva a „hűtő” nem működik – {HU}.\n"
    assert parsed.subject == "Árvíztűrő"
    assert any("undeclared 8-bit" in d for d in parsed.defects)


def test_unknown_declared_charset() -> None:
    parsed = parse_file("unknown-charset.eml")
    assert parsed.text == f"Grüße aus Köln, {HU}\n"
    assert any("unknown charset 'x-unknown'" in d for d in parsed.defects)


@pytest.mark.parametrize("codec", ["iso-8859-2", "cp1250"])
@pytest.mark.parametrize("declared", [None, "utf-8", "us-ascii", "x-unknown", "iso-8859-1"])
def test_decode_text_hungarian(codec: str, declared: str | None) -> None:
    sample = f"Tisztelt Ügyfélszolgálat! {HU}. Üdvözlettel: Győri Ödön\n"
    assert decode_text(sample.encode(codec), declared).text == sample


@pytest.mark.parametrize(
    "sample",
    [
        "As informações estão disponíveis, opções.",  # Portuguese
        "Le coût est sûr, reçu en août.",  # French
        "Õhtul sõidame Pärnusse, kõik on hästi.",  # Estonian
    ],
)
def test_decode_text_latin1_with_o_tilde_is_not_taken_for_hungarian(sample: str) -> None:
    decoded = decode_text(sample.encode("latin-1"), "iso-8859-1")
    assert decoded.text == sample
    assert decoded.defect is None


def test_decode_text_never_processes_escapes() -> None:
    sample = "C:\\new\\table \\u00e9 \\x41 ő"
    for declared in ("unicode-escape", "raw-unicode-escape", "utf-8", None):
        assert decode_text(sample.encode("utf-8"), declared).text == sample


def test_utf8_raw_subject() -> None:
    raw = mail(b"x\n").replace(b"Subject: test", "Subject: Győri ügy – ő/ű".encode())
    assert parse(raw).subject == "Győri ügy – ő/ű"


# --- headers ----------------------------------------------------------------------------


def test_rfc2047_subject_and_addresses() -> None:
    parsed = parse_file("rfc2047-subject-hungarian.eml")
    assert parsed.subject == "Árvíztűrő tükörfúrógép"
    assert parsed.from_ == Address("gabor@example.hu", "Győrvári Gábor")
    assert parsed.to == (
        Address("help@example.com", "Árvíztűrő"),
        Address("j@example.org", "Smith, J"),
    )
    assert parsed.cc == ()
    assert parsed.header("Subject") == "Árvíztűrő tükörfúrógép"
    assert parsed.headers["to"] == ('Árvíztűrő <help@example.com>, "Smith, J" <j@example.org>',)


def test_headers_dict_lower_case_in_order_and_decoded() -> None:
    raw = mail(
        b"x\n",
        b"Received: from a by b; Fri, 05 Jan 2024 10:00:02 +0100\n"
        b"Received: from c\n by d; Fri, 05 Jan 2024 10:00:01 +0100\n"
        b"X-Custom: =?utf-8?q?=C5=91?=\n",
    )
    parsed = parse(raw)
    assert parsed.headers["received"] == (
        "from a by b; Fri, 05 Jan 2024 10:00:02 +0100",
        "from c by d; Fri, 05 Jan 2024 10:00:01 +0100",
    )
    assert parsed.headers["x-custom"] == ("ő",)
    assert parsed.header("X-CUSTOM") == "ő"
    assert list(parsed.headers)[:2] == ["received", "x-custom"]


def test_addresses_malformed_are_skipped_not_raised() -> None:
    raw = mail(b"x\n").replace(
        b"To: help@example.com",
        b'To: Help <HELP@Example.COM>, bad@@x, "=?utf-8?q?Gy=C5=91ri?=" <gy@example.hu>, <>',
    )
    parsed = parse(raw)
    assert parsed.to == (Address("help@example.com", "Help"), Address("gy@example.hu", "Győri"))
    assert any(d.startswith("to:") for d in parsed.defects)


def test_from_recovered_from_malformed_header() -> None:
    raw = mail(b"x\n").replace(b"From: a@example.com", b"From: Big Bug bb@bug.com")
    parsed = parse(raw)
    assert parsed.from_ == Address("bb@bug.com")
    assert "from: address recovered from a malformed header" in parsed.defects


def test_missing_from_is_none() -> None:
    parsed = parse(mail(b"x\n").replace(b"From: a@example.com\n", b""))
    assert parsed.from_ is None


def test_date_is_aware_or_none() -> None:
    parsed = parse(mail(b"x\n"))
    assert parsed.date == datetime(2024, 1, 5, 9, 0, tzinfo=UTC)
    assert parsed.date is not None and parsed.date.tzinfo is not None

    missing = parse(mail(b"x\n").replace(b"Date: Fri, 05 Jan 2024 10:00:00 +0100\n", b""))
    assert missing.date is None
    assert "date: missing" in missing.defects

    junk = parse(mail(b"x\n").replace(b"Fri, 05 Jan 2024 10:00:00 +0100", b"yesterday"))
    assert junk.date is None
    assert "date: unparseable" in junk.defects


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"Message-ID: <abc@example.com>", "<abc@example.com>"),
        (b"Message-ID:   < abc@example.com >  (comment)", "<abc@example.com>"),
        (b"Message-ID: abc@example.com", "<abc@example.com>"),
        (b"Message-ID:\n <abc@exa\n mple.com>", "<abc@example.com>"),
    ],
)
def test_message_id_canonical_form(header: bytes, expected: str) -> None:
    raw = mail(b"x\n").replace(b"Message-ID: <test@example.com>", header)
    parsed = parse(raw)
    assert parsed.message_id == expected
    assert not parsed.synthetic_message_id


def test_missing_message_id_gets_stable_synthetic_id() -> None:
    raw = load("missing-message-id.eml")
    first, second = parse(raw), parse(raw)
    assert first.synthetic_message_id
    assert re.fullmatch(r"<[0-9a-f]{32}@maild\.invalid>", first.message_id)
    assert first.message_id == second.message_id
    assert "message-id: missing, synthetic id used" in first.defects
    # the same mail over SMTP (CRLF) is the same mail
    assert parse(raw.replace(b"\n", b"\r\n")).message_id == first.message_id
    assert parse(raw.replace(b"without", b"with no")).message_id != first.message_id
    assert parse(raw.replace(b"Subject: no id", b"Subject: other")).message_id != first.message_id
    empty = parse(raw.replace(b"Subject:", b"Message-ID: <>\nSubject:"))
    assert empty.synthetic_message_id


def test_in_reply_to_and_references_tolerate_junk() -> None:
    raw = mail(
        b"x\n",
        b"In-Reply-To: <a@x> (Bob's message of Monday)\n"
        b"References: <root@x>, junk-no-brackets@x <a@x>\n <b@x>\t<root@x> <>\n"
        b"References: <c@x>\n",
    )
    parsed = parse(raw)
    assert parsed.in_reply_to == ("<a@x>",)
    assert parsed.references == ("<root@x>", "<a@x>", "<b@x>", "<c@x>")


def test_nul_characters_are_replaced() -> None:
    parsed = parse(mail(b"a\x00b\n").replace(b"Subject: test", b"Subject: t\x00t"))
    assert "\x00" not in parsed.text
    assert "\x00" not in parsed.subject


# --- body hash --------------------------------------------------------------------------


def test_body_hash_ignores_line_ends_transport_headers_and_trailing_space() -> None:
    raw = load("quoted-printable.eml")
    parsed = parse(raw)
    assert parse(raw.replace(b"\n", b"\r\n")).body_hash == parsed.body_hash
    relayed = (
        b"Received: from mx by mx2; Fri, 05 Jan 2024 10:00:01 +0100\nDelivered-To: x@y\n" + raw
    )
    assert parse(relayed).body_hash == parsed.body_hash
    assert parse(raw + b"\n\n  \r\n").body_hash == parsed.body_hash
    assert parse(raw.replace(b"soft", b"hard")).body_hash != parsed.body_hash
    body = raw.split(b"\n\n", 1)[1]
    assert parsed.body_hash == hashlib.sha256(body.rstrip()).hexdigest()


def test_body_hash_of_crlf_gmail_mail() -> None:
    raw = load("czech-quoted-printable-gmail.eml")
    assert b"\r\n" in raw
    parsed = parse(raw)
    assert parsed.body_hash == parse(raw.replace(b"\r\n", b"\n")).body_hash
    assert parsed.subject == "Český test"
    assert parsed.text == "Tohle je test českých písmen odeslaných z gmailu.\n"
    assert parsed.html is not None and "českých" in parsed.html


# --- bodies -----------------------------------------------------------------------------


def test_backslashes_are_kept_exactly() -> None:
    parsed = parse_file("backslash-path.eml")
    assert parsed.text == "The file is in C:\\new\\table and \\u00e9 stays as typed.\n"
    assert "C:\\new\\table" in parsed.text_stripped

    eight_bit = mail(
        "C:\\new\\table – ő\n".encode(),
        mime=b"Content-Type: text/plain; charset=unicode-escape\n",
    )
    assert parse(eight_bit).text == "C:\\new\\table – ő\n"


def test_html_only_mail_becomes_readable_text() -> None:
    parsed = parse_file("html-only.eml")
    assert parsed.html is not None and parsed.html.startswith("<html>")
    assert "the report is at [this link](https://example.com/r?id=1)." in parsed.text
    assert "1. first step" in parsed.text
    assert "- a dash" in parsed.text
    assert "Path: C:\\new\\table and C:\\_temp" in parsed.text
    assert "Logo" in parsed.text
    assert "color" not in parsed.text
    assert parsed.text_stripped == parsed.text


def test_html_to_text_does_not_wrap() -> None:
    sentence = "word " * 60
    text, truncated = html_to_text(f"<p>{sentence}</p>")
    assert text == sentence.strip() + "\n"
    assert not truncated


def test_quoted_printable_and_base64_bodies() -> None:
    assert parse_file("quoted-printable.eml").text.startswith(f"{HU} and a long line")
    assert parse_file("base64-body.eml").text == f"Base64 body: {HU}\n"


def test_attachment_only_mail_has_empty_text() -> None:
    raw = mail(
        b"--B\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=a.pdf\n"
        b"\n%PDF\n--B--\n",
        mime=b"Content-Type: multipart/mixed; boundary=B\n",
    )
    parsed = parse(raw)
    assert parsed.text == ""
    assert parsed.text_stripped == ""
    assert parsed.html is None
    assert [a.filename for a in parsed.attachments] == ["a.pdf"]


# --- attachments ------------------------------------------------------------------------


def test_rfc2231_and_rfc2047_filenames() -> None:
    parsed = parse_file("rfc2231-filename.eml")
    assert [a.filename for a in parsed.attachments] == [
        "árvíztűrő tükör.pdf",
        "üdvözlet.txt",
        "report.doc",  # path components dropped
        "attachment-4.bin",  # no name: generated, stable
    ]
    pdf = parsed.attachments[0]
    payload = b"%PDF-1.4\n% test payload\n" + bytes(range(256))
    assert pdf.content_type == "application/pdf"
    assert pdf.size == len(payload)
    assert pdf.sha256 == hashlib.sha256(payload).hexdigest()
    assert not pdf.inline and pdf.content_id is None
    assert parsed.text == "See the attachments."
    assert parse_file("rfc2231-filename.eml").attachments == parsed.attachments


def test_inline_image_with_content_id() -> None:
    parsed = parse_file("inline-image-cid.eml")
    assert parsed.text == "See the screenshot."
    assert parsed.html is not None and "cid:shot1@example.com" in parsed.html
    first, second = parsed.attachments
    assert first.content_id == "shot1@example.com"
    assert first.inline
    assert first.content_type == "image/png"
    assert first.filename == "attachment-1.png"
    assert first.size == 70
    # no Content-Disposition, but inside multipart/related with a Content-ID
    assert second.content_id == "shot2@example.com"
    assert second.inline


def test_attached_message_is_one_attachment_and_not_the_body() -> None:
    parsed = parse_file("attached-rfc822.eml")
    assert parsed.text == "Forwarding the original below."
    assert "INNER" not in parsed.text
    assert parsed.subject == "Fwd: customer complaint"
    (attached,) = parsed.attachments
    assert attached.content_type == "message/rfc822"
    assert attached.filename == "Panasz: a gép nem működik.eml"
    assert attached.size > 0
    assert attached.sha256 == parse_file("attached-rfc822.eml").attachments[0].sha256


# --- reply stripping --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("reply-en.eml", "Thanks, turning it off and on helped.\n"),
        ("reply-de.eml", "Danke, jetzt geht es.\n"),
        ("reply-fr.eml", "Merci, cela fonctionne.\n"),
        ("reply-hu-thunderbird.eml", "Köszönöm, most már működik.\n"),
        ("reply-hu-gmail.eml", "Rendben, köszönöm a segítséget.\n"),
        ("reply-hu-gmail-new.eml", "Rendben, köszönöm.\n"),
        ("reply-hu-outlook.eml", "A hiba továbbra is fennáll.\n"),
    ],
)
def test_reply_stripping(name: str, expected: str) -> None:
    parsed = parse_file(name)
    assert parsed.text_stripped == expected
    assert parsed.text.startswith(expected.strip())
    assert len(parsed.text) > len(expected)


def test_hungarian_thunderbird_fixture_from_willdurand() -> None:
    body = load("hungarian-thunderbird-body.txt")
    parsed = parse(mail(body, mime=b"Content-Type: text/plain; charset=utf-8\n"))
    assert parsed.text_stripped == "Thank you!\n"


def test_answers_between_quotes_are_kept() -> None:
    parsed = parse_file("reply-inline-answers.eml")
    assert "2.4.1" in parsed.text_stripped
    assert "Debian 12" in parsed.text_stripped


def test_strip_reply_keeps_indentation_lists_and_sentences() -> None:
    text = (
        'Steps:\n- open the app\n- click save\n\nTraceback:\n    File "x.py", line 1\n\n'
        "Tisztelettel kérem, nézzék meg.\n\nTisztelettel:\nKiss Anna\n"
    )
    assert strip_reply(text) == (
        'Steps:\n- open the app\n- click save\n\nTraceback:\n    File "x.py", line 1\n\n'
        "Tisztelettel kérem, nézzék meg.\n"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Hi,\n\nThanks, that helped. But now the printer prints blank pages.\n\nThanks,\nBob\n",
            "Hi,\n\nThanks, that helped. But now the printer prints blank pages.\n",
        ),
        (
            "Hallo,\n\nGrüße aus Berlin sendet das ganze Team, und hier ist das Problem.\n",
            "Hallo,\n\nGrüße aus Berlin sendet das ganze Team, und hier ist das Problem.\n",
        ),
        ("Works now.\n\nSent from my iPhone\n", "Works now.\n"),
        ("Works now.\n\n-- \nJohn Smith\nACME, +36 1 234 5678\n", "Works now.\n"),
    ],
)
def test_strip_reply_cuts_sign_offs_not_sentences(text: str, expected: str) -> None:
    assert strip_reply(text) == expected


def test_strip_reply_never_returns_nothing() -> None:
    quoted = "> all of it is quoted\n> nothing else\n"
    assert strip_reply(quoted) == quoted
    header_only = "On Mon, Jan 1, 2024 at 10:00 AM Bob <b@example.com> wrote:\n> x\n"
    assert strip_reply(header_only) == header_only
    assert strip_reply("") == ""


def test_strip_reply_drops_trailing_quote_without_header() -> None:
    assert strip_reply("Yes.\n\n> Do you want it?\n> Really?\n") == "Yes.\n"
    zimbra = "Oui.\n\n- Le 2021-04-09 23:25, Toby Flenderson a écrit :\n> Question ?\n"
    assert strip_reply(zimbra) == "Oui.\n"
    assert strip_reply("Outlook with a reply\n\n\n ------------------------------\n") == (
        "Outlook with a reply\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        "Hello there, this is a line of a message body.\n" * 21_000,
        "a" + " " * 1_000_000 + "b",
        "x" + "\n" * 1_000_000,
        "On " * 333_333,
        ("On " * 60 + "\n") * 5_000,
        ">\n" * 500_000,
        "- item\n" * 150_000,
        ("2024. " * 30 + "\n") * 5_000,
    ],
    ids=[
        "plain",
        "spaces",
        "blank-lines",
        "on-on-on",
        "long-on-lines",
        "quotes",
        "dashes",
        "years",
    ],
)
def test_strip_reply_is_fast_on_1mb(text: str) -> None:
    # The library's regexes take seconds on 10 KB of some of these; strip_reply bounds it
    # (~25 ms at worst measured; the margin is for slow CI machines).
    started = time.perf_counter()
    stripped = strip_reply(text)
    assert time.perf_counter() - started < 0.5
    assert stripped.strip()


# --- robustness -------------------------------------------------------------------------


def test_one_megabyte_header() -> None:
    raw = mail(b"body\n", b"X-Big: " + b"a" * 1_000_000 + b"\n")
    parsed = parse(raw)
    assert len(parsed.headers["x-big"][0]) == 8 * 1024
    assert "headers: values cut to 8192 characters" in parsed.defects
    assert parsed.text == "body\n"


def test_header_count_is_capped() -> None:
    """Kept fields are capped when an operator lets more in than the default limit
    (which quarantines such a mail: tests/test_limits.py)."""
    raw = mail(b"body\n", b"".join(b"X-H%d: v\n" % i for i in range(5000)))
    parsed = parse(raw, replace(DEFAULT_LIMITS, max_header_fields=10_000))
    assert sum(len(values) for values in parsed.headers.values()) == 1000
    assert parsed.subject == "test"  # read although beyond the cap
    assert parsed.message_id == "<test@example.com>"
    assert any("beyond the first 1000" in d for d in parsed.defects)


@pytest.mark.parametrize("seed", range(20))
def test_garbage_is_quarantined_or_parsed(seed: int) -> None:
    rng = random.Random(seed)
    raw = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 20_000)))
    if seed % 2:
        raw = b"From: x@y.z\nContent-Type: multipart/mixed; boundary=q\n\n--q\n" + raw
    try:
        parsed = parse(raw)
    except Quarantine as exc:
        assert exc.step == "parse"
    else:
        assert parsed.message_id


@pytest.mark.parametrize(
    "raw",
    [b"", b"\r\n\r\n", b"I think you're onto something.\n\nOn Mon, Bob wrote:\n> x\n"],
    ids=["empty", "blank", "headerless-body"],
)
def test_not_a_mail_is_quarantined(raw: bytes) -> None:
    with pytest.raises(Quarantine) as caught:
        parse(raw)
    assert caught.value.step == "parse"


def test_too_deep_nesting_is_quarantined() -> None:
    nested = b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(2000)
    )
    raw = b"From: a@b.c\nContent-Type: multipart/mixed; boundary=b0\n\n" + nested
    with pytest.raises(Quarantine, match="nesting"):
        parse(raw)


@pytest.mark.slow
def test_twenty_megabyte_mail_with_a_fifteen_megabyte_attachment() -> None:
    payload = random.Random(7).randbytes(15 * 1024 * 1024)
    raw = mail(
        b"--B\nContent-Type: text/plain\n\n" + b"Hello\n" * 100_000 + b"--B\n"
        b"Content-Type: application/octet-stream\n"
        b"Content-Disposition: attachment; filename=big.bin\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(payload) + b"--B--\n",
        mime=b"Content-Type: multipart/mixed; boundary=B\n",
    )
    assert len(raw) > 20_000_000
    started = time.perf_counter()
    parsed = parse(raw)
    assert time.perf_counter() - started < 30
    (attachment,) = parsed.attachments
    assert attachment.size == len(payload)
    assert attachment.sha256 == hashlib.sha256(payload).hexdigest()
    assert parsed.text.count("Hello") == 100_000


# --- the shared corpus ------------------------------------------------------------------

NOT_MAILS = {"SOURCE.txt", "README.txt", "MANIFEST.tsv", "labels.tsv", ".gitattributes"}


def corpus_files() -> list[Path]:
    need_corpus(CORPUS)
    return sorted(
        path
        for path in CORPUS.rglob("*")
        if path.is_file() and path.suffix not in (".yml", ".tsv") and path.name not in NOT_MAILS
    )


def test_every_corpus_file_parses_or_is_quarantined() -> None:
    files = corpus_files()
    assert len(files) > 300
    parsed = quarantined = 0
    for path in files:
        try:
            result = parse(path.read_bytes())
        except Quarantine as exc:
            assert exc.step == "parse", path
            quarantined += 1
        else:
            assert result.message_id.startswith("<"), path
            assert result.text_stripped or not result.text.strip(), path
            parsed += 1
    # headerless reply bodies are quarantined; every real mail parses
    assert parsed > 300
    assert quarantined < 80


def test_the_newest_reply_is_the_one_the_library_reads(tmp_path: Path) -> None:
    """`newest_reply` stops where the library's `read` goes on through the history: on
    the test mails, 300 generated ones (replies in each client style and language) and
    the real-world corpus when it is there, both give the same newest reply."""
    paths = sorted(DATA.glob("*.eml")) + bench_corpus(tmp_path / "bench", 300)
    if CORPUS.is_dir():
        paths += sorted(p for p in CORPUS.rglob("*.eml") if p.is_file())
    compared = replies = 0
    for path in paths:
        try:
            text = parse(path.read_bytes()).text
        except Quarantine:
            continue
        mine, only = newest_reply(text)
        read = EmailMessage(
            text=text, languages=list(_REPLY_TEMPLATE.languages), keep_hyphen_lists=True
        ).read()
        theirs = read.replies[0]
        assert (mine.content, mine.headers, mine.signatures, mine.disclaimers) == (
            theirs.content,
            theirs.headers,
            theirs.signatures,
            theirs.disclaimers,
        ), path
        assert only == (theirs is read.replies[-1]), path
        compared += 1
        replies += not only
    assert compared > 300 and replies > 100


def test_an_id_too_long_in_utf8_is_not_kept() -> None:
    """998 octets, not characters: 600 "é" are 1,200 octets, past what a header line may
    hold. Counted in characters, 998 random CJK ones (2,994 octets) got through, and
    PostgreSQL refuses such an index entry (ProgramLimitExceeded, an OperationalError),
    so the mail was held back for ever as if the database were down."""
    long_id = "<" + "é" * 600 + "@x.example>"
    fits = "<" + "é" * 400 + "@x.example>"
    raw = (
        f"From: a@x.example\r\nMessage-ID: {long_id}\r\nIn-Reply-To: {fits}\r\n"
        f"References: {long_id} {fits}\r\nSubject: s\r\n\r\nbody\r\n"
    ).encode()
    mail = parse(raw)
    assert mail.synthetic_message_id
    assert mail.in_reply_to == (fits,)
    assert mail.references == (fits,)
