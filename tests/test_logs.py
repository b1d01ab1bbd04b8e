"""Log lines: one per event, key=value (values with spaces, quotes or '=' in JSON
quotes), a local ISO time stamp; nothing below the configured level."""

from __future__ import annotations

import logging
import re

import pytest

from maild import logs


def test_an_event_is_one_key_value_line(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("logfmt", "INFO")
    log = logging.getLogger("maild.test")
    logs.event(log, "mail processed", spool_id=7, subject='say "hi" = hello', step=None)
    logs.event(log, "not shown", logging.DEBUG, spool_id=8)
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} level=info logger=maild.test "
        r'event="mail processed" spool_id=7 subject="say \\"hi\\" = hello" step=None',
        line,
    ), line


def test_an_event_as_json_keeps_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "INFO")
    logs.event(logging.getLogger("maild.test"), "ready", listeners="127.0.0.1:2525")
    line = capsys.readouterr().err.strip()
    assert '"event": "ready"' in line and '"listeners": "127.0.0.1:2525"' in line
