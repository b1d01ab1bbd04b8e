"""The parse step's email parser: the stdlib's FeedParser with two costs taken out must
build the same message tree as email.message_from_bytes."""

from __future__ import annotations

import email
import re
from email.message import Message
from typing import Any

import pytest

from maild.pipeline.parse import (
    _BoundaryPattern,
    _FeedParser,
    _FeedParserRegex,
    _LineEndAtEnd,
    _message,
)
from tests.conftest import CORPUS_DEV, need_corpus

# Boundaries with every character re.escape escapes, and one that starts like another.
ODD_BOUNDARY = "a.b*c+d?(e)[f]{g}|h^$ i#&~-x"
OUTER = "=_outer"
INNER = "=_outer_inner"


def tree(message: Message) -> list[Any]:
    """Everything the parser decides about a message, recursively."""
    payload = message.get_payload()
    return [
        list(message.raw_items()),
        message.preamble,
        message.epilogue,
        [type(defect).__name__ for defect in message.defects],
        message.get_unixfrom(),
        message.get_default_type(),
        [tree(part) for part in payload] if isinstance(payload, list) else payload,
    ]


def multipart(
    boundary: str, parts: list[bytes], *, close: bool = True, eol: bytes = b"\n"
) -> bytes:
    quoted = boundary.replace("\\", "\\\\").replace('"', '\\"').encode()
    out = b'Content-Type: multipart/mixed; boundary="' + quoted + b'"' + eol + eol
    out += b"preamble" + eol
    for part in parts:
        out += b"--" + boundary.encode() + eol + part + eol
    if close:
        out += b"--" + boundary.encode() + b"--  " + eol + b"epilogue" + eol
    return out


def text_part(body: bytes, eol: bytes = b"\n") -> bytes:
    return b"Content-Type: text/plain" + eol + eol + body


MAILS = {
    "nested, inner boundary starts with the outer": b"From: a@example.com\n"
    + multipart(
        OUTER,
        [
            multipart(INNER, [text_part(b"one\n"), text_part(b"two")]),
            text_part(b"three\n\n"),
        ],
    ),
    "regex characters in the boundary": b"From: a@example.com\n"
    + multipart(ODD_BOUNDARY, [text_part(b"x"), text_part(b"--" + ODD_BOUNDARY.encode() + b"x")]),
    "backslash in the boundary": b"From: a@example.com\n" + multipart("b\\s", [text_part(b"x\n")]),
    "CRLF": b"From: a@example.com\r\n"
    + multipart("crlf", [text_part(b"x\r\ny\r\n", b"\r\n")], eol=b"\r\n"),
    "lone CR": b"From: a@example.com\r" + multipart("cr", [text_part(b"x\ry\r", b"\r")], eol=b"\r"),
    "no close boundary": b"From: a@example.com\n"
    + multipart("open", [text_part(b"x\n")], close=False),
    "no start boundary": b"From: a@example.com\n"
    b'Content-Type: multipart/mixed; boundary="nowhere"\n\nonly text\n',
    "no boundary parameter": b"From: a@example.com\nContent-Type: multipart/mixed\n\ntext\n",
    "attached message": b"From: a@example.com\n"
    + multipart(
        "outer",
        [
            b"Content-Type: message/rfc822\n\n"
            b"From: b@example.com\n" + multipart("inner", [text_part(b"inside\n")])
        ],
    ),
    # The CR is the last character of the first 8192-character feed.
    "CRLF split by a feed chunk": b"From: a@example.com\r\n"
    + multipart("chunk", [text_part(b"x" * 8072 + b"\r\n" + b"y\r\n" * 50, b"\r\n")], eol=b"\r\n"),
    "8-bit bytes": b"From: a@example.com\n"
    + multipart("8bit", [text_part("árvíztűrő\n".encode("iso-8859-2"))]),
}


@pytest.mark.parametrize("raw", MAILS.values(), ids=MAILS.keys())
def test_same_tree_as_the_email_package(raw: bytes) -> None:
    assert tree(_message(raw)) == tree(email.message_from_bytes(raw))


def test_same_tree_as_the_email_package_on_the_corpus() -> None:
    need_corpus(CORPUS_DEV)
    files = [path for path in sorted(CORPUS_DEV.rglob("*")) if path.is_file()]
    assert files
    for path in files:
        raw = path.read_bytes()
        assert tree(_message(raw)) == tree(email.message_from_bytes(raw)), path


def boundary_regex(separator: str) -> str:
    """The pattern the stdlib feedparser compiles for a boundary."""
    return (
        "(?P<sep>" + re.escape(separator) + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
    )


@pytest.mark.parametrize("boundary", ["simple", ODD_BOUNDARY, "b\\s", "", "\t\n"])
def test_boundary_pattern_matches_as_the_regex(boundary: str) -> None:
    separator = "--" + boundary
    pattern = boundary_regex(separator)
    fast = _FeedParserRegex().compile(pattern)
    assert isinstance(fast, _BoundaryPattern)
    slow = re.compile(pattern)
    lines = [
        separator + tail
        for tail in (
            "",
            "\n",
            "\r\n",
            "\r",
            "--",
            "--\n",
            "-- \t\r\n",
            "  \n",
            "x\n",
            "--x",
            "\n\n",
        )
    ] + ["", "\n", "x" + separator + "\n", separator[:-1] + "\n"]
    for line in lines:
        expected = slow.match(line)
        got = fast.match(line)
        assert (got is None) == (expected is None), repr(line)
        if got is not None and expected is not None:
            for group in ("end", "ws", "linesep"):
                assert got.group(group) == expected.group(group), repr(line)
            assert got.end() == expected.end(), repr(line)


def test_other_patterns_are_compiled_as_they_are() -> None:
    pattern = r"(?P<sep>--b)(?P<end>--)?"
    assert _FeedParserRegex().compile(pattern) == re.compile(pattern)
    assert _FeedParserRegex().escape("a.b") == re.escape("a.b")


@pytest.mark.parametrize(
    "text", ["", "x", "\n", "\r", "\r\n", "a\n", "a\r\n", "a\n\r", "\n\r\n", "ab"]
)
def test_line_end_search_as_the_regex(text: str) -> None:
    slow = re.compile(r"(\r\n|\r|\n)\Z")
    expected = slow.search(text)
    got = _LineEndAtEnd(slow).search(text)
    assert (got and got.group(0)) == (expected and expected.group(0))


def test_the_stdlib_parser_is_the_one_sped_up() -> None:
    # On a Python whose feedparser differs the replacements stand aside: the tree stays
    # right but the speed-up is gone; this says so.
    names = _FeedParser._parsegen.__globals__
    assert isinstance(names["NLCRE_eol"], _LineEndAtEnd)
    assert isinstance(names["re"], _FeedParserRegex)
    parser = _FeedParser()
    assert parser._parsegen.__code__ is email.feedparser.FeedParser._parsegen.__code__
