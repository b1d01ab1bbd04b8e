"""A mail that takes too long to parse is quarantined as a timeout; the others go on."""

from __future__ import annotations

import io
import json
import smtplib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from maild.cli import EX_OK, main
from maild.errors import Quarantine
from maild.pipeline.limits import DEFAULT_LIMITS
from maild.pipeline.parse import parse_or_error
from maild.pipeline.parse_ahead import ParseAhead
from maild.types import ParsedMail
from tests.conftest import make_mail
from tests.daemon import Daemon
from tests.test_smtp import export, message_ids, start

# Far above the quick mails' parse time (3-7 ms), a fifth of the slow one's (0.5 s).
LIMIT = 0.1
REASON = f"timeout: still parsing after {LIMIT:g} s (mail.max_parse_seconds = {LIMIT:g})"


def slow_mail() -> bytes:
    """A real HTML-only mail whose text version takes about half a second to render: 640 KB
    of dense table markup (maild renders at most 256 KB of an HTML body)."""
    line = b"<tr><td><b>x</b> cell <i>y</i></td><td>z</td></tr>" * 15 + b"\r\n"
    return (
        b"From: Mallory <mallory@customer.example>\r\nTo: support@example.com\r\n"
        b"Subject: slow\r\nMessage-ID: <slow@customer.example>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n<table>\r\n" + line * 800 + b"</table>\r\n"
    )


def quick(n: int) -> bytes:
    return make_mail(message_id=f"<quick-{n}@customer.example>", subject=f"quick {n}")


def test_a_parse_past_the_limit_is_interrupted_and_quarantined() -> None:
    limits = replace(DEFAULT_LIMITS, max_parse_seconds=LIMIT)
    result = parse_or_error(slow_mail(), limits)
    assert isinstance(result, Quarantine)
    assert (result.step, result.reason) == ("parse", REASON)
    # The timer is gone with the parse: the next mail parses in full.
    assert isinstance(parse_or_error(quick(1), limits), ParsedMail)


def test_zero_means_no_bound() -> None:
    limits = replace(DEFAULT_LIMITS, max_parse_seconds=0)
    assert isinstance(parse_or_error(slow_mail(), limits), ParsedMail)


@pytest.mark.parametrize("backstop", [None, LIMIT], ids=["deadline", "backstop"])
def test_parse_ahead_quarantines_only_the_slow_mail(backstop: float | None) -> None:
    """In parse-ahead processes the deadline fires inside the process; with it off, the
    backstop kills the process, and the batch is parsed again one mail at a time."""
    limit = LIMIT if backstop is None else 0
    limits = replace(DEFAULT_LIMITS, max_parse_seconds=limit)
    ahead: ParseAhead[str] = ParseAhead(workers=1, window=1, limits=limits, backstop=backstop)
    try:
        results = dict(
            [
                # A batch each: the backstop's allowance grows with the batch.
                *ahead.submit(["a"], [quick(1)]),
                *ahead.submit(["slow"], [slow_mail()]),
                *ahead.submit(["b"], [quick(2)]),
                *ahead.submit(["c"], [quick(3)]),
                *ahead.submit(["d"], [quick(4)]),
                *ahead.finish(),
            ]
        )
    finally:
        ahead.close()
    assert list(results) == ["a", "slow", "b", "c", "d"]
    timed_out = results.pop("slow")
    assert isinstance(timed_out, Quarantine)
    assert timed_out.reason.startswith("timeout: still parsing after")
    assert all(isinstance(parsed, ParsedMail) for parsed in results.values())


def _quarantined(run: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(run("quarantine", "list", "--json"))
    return items


def test_ingest_files_the_rest_and_quarantines_the_slow_one(tmp_path: Path, db_url: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[mail]\nmax_parse_seconds = {LIMIT}\n')
    inbox = tmp_path / "mails"
    inbox.mkdir()
    (inbox / "1.eml").write_bytes(quick(1))
    (inbox / "2.eml").write_bytes(slow_mail())
    (inbox / "3.eml").write_bytes(quick(2))

    def run(*argv: str) -> str:
        out = io.StringIO()
        assert main([*argv, "--config", str(config)], stdout=out) == EX_OK
        return out.getvalue()

    summary = run("ingest", str(inbox))
    assert "done 2" in summary and "quarantined 1" in summary
    (item,) = _quarantined(run)
    assert (item["step"], item["reason"], item["subject"]) == ("parse", REASON, "slow")


@pytest.mark.parametrize("workers", [1, 0], ids=["process", "thread"])
def test_the_daemon_quarantines_the_slow_mail_and_files_the_others(
    tmp_path: Path, db_url: str, daemons: list[Daemon], workers: int
) -> None:
    daemon = start(
        daemons,
        tmp_path,
        db_url,
        mail={"max_parse_seconds": LIMIT},
        daemon={"workers": workers, "poll_interval": 0.5},
    )
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=60) as client:
        for raw in (quick(1), slow_mail(), quick(2)):
            assert client.sendmail("c@customer.example", ["support@example.com"], raw) == {}
    daemon.processed(3)
    assert sorted(message_ids(export(tmp_path, daemon))) == [
        "<quick-1@customer.example>",
        "<quick-2@customer.example>",
    ]
    timed_out = daemon.count(
        lambda e: e.get("event") == "mail processed" and e.get("reason") == REASON
    )
    assert timed_out == 1
