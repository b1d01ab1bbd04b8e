"""Structured logs: one line per event, key=value or JSON, chosen in [logging]."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
_NEEDS_QUOTES = re.compile(r'[ "=\n\t]')


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self._as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": _timestamp(int(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self._as_json:
            return json.dumps(fields, default=str, ensure_ascii=False)
        return " ".join(f"{key}={_quote(value)}" for key, value in fields.items())


def _quote(value: Any) -> str:
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return json.dumps(text, ensure_ascii=False)


_last_second: tuple[int, str] = (-1, "")


def _timestamp(second: int) -> str:
    """Local ISO time of a log record; formatted once a second, not once a line."""
    global _last_second
    if _last_second[0] != second:
        _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second)))
    return _last_second[1]


def configure(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json=fmt == "json"))
    root = logging.getLogger("maild")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with its fields (spool_id, message_id, ticket ...)."""
    # The record is made here rather than by logger.log, which would walk the stack for
    # a source line the format never shows: a bulk import logs a line per mail, and that
    # walk cost half of it.
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, "", 0, name, (), None, extra=fields))
