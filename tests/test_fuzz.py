"""Property tests: mutated real mail never breaks the pipeline; it is filed or kept, with reason."""

from __future__ import annotations

import os
import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from maild.app import App
from maild.db.models import SpoolEntry
from maild.errors import Quarantine
from maild.pipeline.parse import parse
from maild.pipeline.process import UNEXPECTED
from maild.types import SpoolState
from tests.conftest import AppFactory, deliver, make_mail
from tests.test_corpus import corpus_files

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
# Every real mail of the sample corpus and CPython's email test data seeds the mutations.
SEEDS += [path.read_bytes() for path in corpus_files()]

# The CI sizes; a long run: MAILD_FUZZ_EXAMPLES=5000 MAILD_FUZZ_MAILS=20000 (and
# MAILD_FUZZ_SEED to vary the pipeline run's mutants).
EXAMPLES = int(os.environ.get("MAILD_FUZZ_EXAMPLES", "150"))
MAILS = int(os.environ.get("MAILD_FUZZ_MAILS", "240"))
PIPELINE_SEED = int(os.environ.get("MAILD_FUZZ_SEED", "20260302"))
# The pipeline run's time bound per mail: no mutant of a real mail should come near it.
PARSE_SECONDS = 10.0


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


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


def test_mutated_mail_through_the_whole_pipeline(make_app: AppFactory) -> None:
    """Many mutants into one database (on SQLite and PostgreSQL), outside hypothesis for
    speed, under the per-mail time bound: each is ticketed, quarantined or ignored, with a
    reason, none by an unexpected error, and every one accounted for in the spool."""
    app = make_app(mail={"max_parse_seconds": PARSE_SECONDS})
    rng = random.Random(PIPELINE_SEED)
    states: Counter[SpoolState] = Counter()
    for i in range(MAILS):
        raw = mutate(rng.choice(SEEDS), rng.randrange(2**32), KINDS[i % len(KINDS)])
        outcome = deliver(app, raw)
        assert outcome.state in (SpoolState.DONE, SpoolState.QUARANTINED, SpoolState.IGNORED)
        if outcome.state is not SpoolState.DONE:
            assert outcome.step and outcome.reason
        assert not (outcome.reason or "").startswith(UNEXPECTED), outcome
        assert not (outcome.reason or "").startswith("timeout"), outcome
        states[outcome.state] += 1
    with app.db.transaction() as session:
        kept = Counter(
            SpoolState(state) for (state,) in session.execute(select(SpoolEntry.state)).all()
        )
    assert kept == states
    print(f"fuzz pipeline: {MAILS} mutants from {len(SEEDS)} seeds: {dict(states)}")


def test_an_overlong_address_recovered_from_a_broken_from_is_dropped(app: App) -> None:
    """Found by the pipeline fuzz on PostgreSQL: a junk-stretched From header whose one
    loose address is longer than the contact column (320) used to fail the insert."""
    address = "y" * 2000 + "pete@silly.example"
    raw = make_mail(sender=f"Pete {address} (broken", message_id="<long@silly.example>")
    assert parse(raw).from_ is None
    outcome = deliver(app, raw)
    assert (outcome.state, outcome.reason) == (
        SpoolState.QUARANTINED,
        "no sender: no readable From, Sender, Reply-To or envelope",
    )


def test_overlong_content_type_and_message_id_fit_their_columns(app: App) -> None:
    """Found by the long pipeline fuzz on PostgreSQL: a content type past RFC 6838's 255
    and a 998-character Message-ID (1000 with its brackets) failed their inserts."""
    long_type = "application/" + "y" * 300
    long_id = "i" * 990 + "@x.example"
    raw = (
        b"From: a@customer.example\r\nTo: support@example.com\r\nSubject: long\r\n"
        + f"Message-ID: <{long_id}>\r\n".encode()
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        + f"--B\r\nContent-Type: {long_type}; name=a.bin\r\n\r\nxyz\r\n--B--\r\n".encode()
    )
    mail = parse(raw)
    assert [a.content_type for a in mail.attachments] == ["application/octet-stream"]
    assert len(mail.message_id) <= 998 and mail.message_id.endswith("@maild.invalid>")
    assert deliver(app, raw).state is SpoolState.DONE


def test_an_rfc2231_charset_on_an_8bit_body_is_ticketed(app: App) -> None:
    """Found by the long pipeline fuzz: the email package's get_payload() fails with a
    TypeError when the charset parameter is RFC 2231-encoded and the body has 8-bit
    bytes; the limit check asked every leaf for its payload."""
    raw = (
        b"From: a@customer.example\r\nTo: support@example.com\r\nSubject: 2231\r\n"
        b"Message-ID: <rfc2231@customer.example>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset*=utf-8'en'utf-8\r\n\r\n"
        b"k\xc3\xb6sz\xc3\xb6n\xc3\xb6m\r\n"
    )
    assert parse(raw).subject == "2231"
    assert deliver(app, raw).state is SpoolState.DONE
