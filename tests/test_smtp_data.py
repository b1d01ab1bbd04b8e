"""The chunked DATA reader: the same content as a line-by-line reader, however the bytes arrive.

The session tests at the end send over a real loopback SMTP connection.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from maild.db.models import SpoolRaw
from maild.receive.smtp_data import read_data
from tests.conftest import AppFactory
from tests.listener import running_listener

NEXT_COMMAND = b"MAIL FROM:<next@customer.example>\r\n"


def stuffed(lines: Sequence[bytes]) -> bytes:
    """What a client sends for these lines: dot-stuffed, CRLF, then the end marker."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


async def read_in(chunks: Sequence[bytes], size_limit: int | None) -> tuple[bytes | None, bytes]:
    """What read_data returns when fed these chunks, and the next line left in the reader."""
    reader = asyncio.StreamReader(limit=1001)

    async def feed() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)  # let the reader take each chunk on its own

    feeding = asyncio.ensure_future(feed())
    content = await read_data(reader, size_limit)
    await feeding
    return content, await reader.readuntil(b"\r\n")


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@given(
    lines=st.lists(
        st.one_of(
            st.sampled_from([b"", b".", b"..", b".x", b"x.", b"\r", b"\n.", b"a\rb"]),
            st.binary(max_size=40).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r")),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
)
def test_content_is_the_lines_with_dot_stuffing_undone(lines: list[bytes], cuts: list[int]) -> None:
    sent = stuffed(lines) + b".\r\n" + NEXT_COMMAND
    content, following = asyncio.run(read_in(split(sent, cuts), None))
    assert content == b"".join(line + b"\r\n" for line in lines)
    assert following == NEXT_COMMAND


def test_an_empty_mail() -> None:
    assert asyncio.run(read_in([b".\r\n" + NEXT_COMMAND], None)) == (b"", NEXT_COMMAND)


@pytest.mark.parametrize("at", range(1, 8))
def test_an_end_marker_split_anywhere_is_found(at: int) -> None:
    sent = b"Subject: x\r\n\r\nbody\r\n.\r\n" + NEXT_COMMAND
    cut = len(b"Subject: x\r\n\r\nbody") + at - 1
    content, following = asyncio.run(read_in([sent[:cut], sent[cut:]], None))
    assert content == b"Subject: x\r\n\r\nbody\r\n"
    assert following == NEXT_COMMAND


def test_lines_beyond_the_rfc_limit_are_taken() -> None:
    line = b"x" * 5000
    content, _ = asyncio.run(read_in([line + b"\r\n.\r\n" + NEXT_COMMAND], None))
    assert content == line + b"\r\n"


def test_the_size_limit_counts_the_content_as_sent() -> None:
    body = b"y" * 98 + b"\r\n"  # 100 bytes
    sent = body + b".\r\n" + NEXT_COMMAND
    assert asyncio.run(read_in([sent], 100)) == (body, NEXT_COMMAND)
    assert asyncio.run(read_in([sent], 99)) == (None, NEXT_COMMAND)


def test_content_over_the_limit_is_dropped_as_it_comes() -> None:
    # Far over the limit, in small chunks, with the end marker split across two of them.
    chunks = [b"z" * 998 + b"\r\n"] * 200 + [b"\r", b"\n.", b"\r\n" + NEXT_COMMAND]
    assert asyncio.run(read_in(chunks, 5000)) == (None, NEXT_COMMAND)


def test_a_stream_that_ends_before_the_marker_is_an_error() -> None:
    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"Subject: cut off\r\n")
        reader.feed_eof()
        await read_data(reader, None)

    with pytest.raises(ConnectionResetError):
        asyncio.run(run())


def converse(port: int, script: Sequence[tuple[bytes, int]]) -> list[bytes]:
    """Send each step in one write and read the number of replies it should bring."""
    replies: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        stream = sock.makefile("rb")
        replies.append(stream.readline())
        for step, expected in script:
            sock.sendall(step)
            for _ in range(expected):
                line = stream.readline()
                while line[3:4] == b"-":  # a multi-line reply
                    line = stream.readline()
                replies.append(line)
    return replies


def test_a_pipelined_session_spools_each_mail_as_sent(make_app: AppFactory) -> None:
    app = make_app()
    first = (
        b"Subject: one\r\nMessage-ID: <pipe-1@customer.example>\r\n\r\n"
        + b"..leading dot\r\n"
        + b"w" * 3000
        + b"\r\n"
    )
    second = b"Subject: two\r\nMessage-ID: <pipe-2@customer.example>\r\n\r\nok\r\n"
    envelope = b"MAIL FROM:<a@customer.example>\r\nRCPT TO:<support@example.com>\r\n"
    with running_listener(app) as smtp:
        replies = converse(
            smtp.port,
            [
                (b"EHLO client.example\r\n", 1),
                (envelope, 2),
                (b"DATA\r\n", 1),
                # The end of the first mail and the whole next transaction in one write.
                (first + b".\r\n" + envelope, 3),
                (b"DATA\r\n", 1),
                (second + b".\r\nQUIT\r\n", 2),
            ],
        )
    assert [reply[:3] for reply in replies] == [
        b"220", b"250", b"250", b"250", b"354", b"250", b"250", b"250", b"354", b"250", b"221"
    ]  # fmt: skip
    with app.db.transaction() as session:
        raws = session.scalars(select(SpoolRaw.raw).order_by(SpoolRaw.spool_id)).all()
    assert [raw.split(b"\r\n\r\n", 1)[1] for raw in raws] == [
        b".leading dot\r\n" + b"w" * 3000 + b"\r\n",
        b"ok\r\n",
    ]
