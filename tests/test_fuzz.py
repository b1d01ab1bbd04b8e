"""Property tests: mutated real mail never breaks the pipeline; it is filed or kept, with reason."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maild.app import App
from maild.errors import Quarantine
from maild.pipeline.parse import parse
from maild.pipeline.process import UNEXPECTED
from maild.types import SpoolState
from tests.conftest import CORPUS_DEV, deliver, make_mail

SEEDS: list[bytes] = [
    make_mail(cc="Bob <bob@x.example>", headers={"References": "<a@b> <c@d>"}),
    (
        b"From: =?iso-8859-2?q?=C1rv=EDzt=FBr=F5?= <a@hu.example>\r\n"
        b"To: support@example.com\r\nSubject: =?utf-8?b?w6FydsOtenTFsXLFkQ==?=\r\n"
        b"Message-ID: <m1@hu.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
        b"--XX\r\nContent-Type: text/plain; charset=iso-8859-2\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=C1rv=EDzt=FBr=F5 t=FCk=F6r\r\n"
        b"--XX\r\nContent-Type: application/pdf; name*=utf-8''sz%C3%A1mla.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n"
    ),
]
for name in ("django-helpdesk", "mikel-mail/mime_emails", "sisimai"):
    folder = CORPUS_DEV / name
    if folder.is_dir():
        SEEDS += [p.read_bytes() for p in sorted(folder.iterdir())[:6] if p.suffix == ".eml"]


def mutate(raw: bytes, seed: int, kind: str) -> bytes:
    rng = random.Random(seed)
    if not raw:
        return raw
    if kind == "truncate":
        return raw[: rng.randrange(len(raw))]
    if kind == "flip":
        data = bytearray(raw)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == "duplicate_headers":
        head, _, body = (
            raw.partition(b"\n\n") if b"\r\n\r\n" not in raw else raw.partition(b"\r\n\r\n")
        )
        lines = head.splitlines(keepends=True)
        lines += [rng.choice(lines) for _ in range(rng.randint(1, 5))]
        rng.shuffle(lines)
        return b"".join(lines) + b"\r\n\r\n" + body
    if kind == "break_boundaries":
        return raw.replace(b"--", rng.choice([b"-", b"--x", b"", b"---"]), rng.randint(1, 4))
    if kind == "huge_header":
        return b"X-Junk: " + b"a" * rng.randint(10_000, 200_000) + b"\r\n" + raw
    if kind == "no_separator":
        return raw.replace(b"\r\n\r\n", b"\r\n", 1).replace(b"\n\n", b"\n", 1)
    if kind == "deep_mime":
        # Around the default mail.max_mime_depth (32): some pass, some are quarantined.
        for level in range(rng.randint(20, 45)):
            head = b'Content-Type: multipart/mixed; boundary="L%d"\r\n\r\n' % level
            raw = head + b"--L%d\r\n%s\r\n--L%d--\r\n" % (level, raw, level)
        return b"From: deep@x.example\r\nMIME-Version: 1.0\r\n" + raw
    if kind == "long_line":
        at = rng.randrange(len(raw))
        return raw[:at] + b"y" * rng.choice([2_000, 1_100_000]) + raw[at:]
    return raw


KINDS = [
    "truncate",
    "flip",
    "duplicate_headers",
    "break_boundaries",
    "huge_header",
    "no_separator",
    "deep_mime",
    "long_line",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(min_value=0, max_value=len(SEEDS) - 1),
    seed=st.integers(min_value=0, max_value=2**32),
    kind=st.sampled_from(KINDS),
)
def test_parse_never_raises_anything_but_quarantine(index: int, seed: int, kind: str) -> None:
    raw = mutate(SEEDS[index], seed, kind)
    try:
        mail = parse(raw)
    except Quarantine as exc:
        assert exc.reason
        return
    assert mail.message_id.startswith("<")
    assert len(mail.body_hash) == 64


def test_mutated_mail_through_the_whole_pipeline(app: App) -> None:
    """Many mutants into one database (on SQLite and PostgreSQL), outside hypothesis for speed."""
    rng = random.Random(20260302)
    for i in range(240):
        raw = mutate(rng.choice(SEEDS), rng.randrange(2**32), KINDS[i % len(KINDS)])
        outcome = deliver(app, raw)
        assert outcome.state in (SpoolState.DONE, SpoolState.QUARANTINED, SpoolState.IGNORED)
        if outcome.state is not SpoolState.DONE:
            assert outcome.step and outcome.reason
        assert not (outcome.reason or "").startswith(UNEXPECTED), outcome
