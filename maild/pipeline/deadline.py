"""A time bound on parsing one mail: past `[mail] max_parse_seconds` it is quarantined.

Parsing is the step whose cost the sender controls (MIME structure, HTML to render as
text, quoted history to strip), so it is the step a hostile mail would make slow. The
bound is a real-time timer that interrupts the parse where it stands; the parse holds no
lock and writes nothing, so abandoning it halfway loses nothing. Python delivers the
timer's signal only to the main thread, between bytecodes: every process that parses
(a worker process, a parse-ahead process, `maild ingest`) parses on its main thread,
and a parse stuck inside one long C call is cut short by the parse-ahead backstop
(parse_ahead.py), which kills the process instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

from maild.errors import Quarantine

STEP: Final = "parse"


class ParseTimeout(BaseException):
    """Raised into a parse that ran out of time.

    A BaseException, so that the parsing libraries' own `except Exception` repairs do
    not swallow it and carry on.
    """


def timeout_quarantine(waited: float, limit: float) -> Quarantine:
    return Quarantine(
        STEP, f"timeout: still parsing after {waited:g} s (mail.max_parse_seconds = {limit:g})"
    )


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise ParseTimeout in the block once `seconds` have passed (0: no bound).

    Off the main thread this cannot interrupt anything and does nothing; those callers
    parse in a parse-ahead process instead.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise ParseTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
