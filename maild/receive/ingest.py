"""`maild ingest`: mail from files, directories, Maildirs, mbox files or stdin, into the spool."""

from __future__ import annotations

import mailbox
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class MissingInput(Exception):
    """A path given on the command line does not exist or cannot be read."""


@dataclass(frozen=True, slots=True)
class Incoming:
    label: str  # where it came from, for logs: a path, "path#3" inside an mbox, or "-"
    raw: bytes


def read_inputs(paths: list[str], stdin: BinaryIO | None = None) -> Iterator[Incoming]:
    """Every mail under the given paths, one at a time (an mbox is never loaded whole)."""
    for path in paths:
        if path == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            yield Incoming("-", stream.read())
            continue
        target = Path(path)
        if not target.exists():
            raise MissingInput(f"{path}: no such file or directory")
        if not os.access(target, os.R_OK):
            raise MissingInput(f"{path}: not readable")
        yield from _read_path(target)


def check_inputs(paths: list[str]) -> None:
    """Fail before spooling anything if a path is missing, so a typo spools nothing."""
    for path in paths:
        if path != "-" and not Path(path).exists():
            raise MissingInput(f"{path}: no such file or directory")


def _read_path(target: Path) -> Iterator[Incoming]:
    if target.is_dir():
        if _is_maildir(target):
            yield from _read_maildir(target)
        else:
            for child in sorted(p for p in target.rglob("*") if p.is_file()):
                yield from _read_file(child)
        return
    yield from _read_file(target)


def _read_file(path: Path) -> Iterator[Incoming]:
    with path.open("rb") as handle:
        head = handle.read(5)
    # A mail file never starts with "From " (no colon): that is an mbox separator line.
    if head == b"From ":
        yield from _read_mbox(path)
    else:
        yield Incoming(str(path), path.read_bytes())


def _read_mbox(path: Path) -> Iterator[Incoming]:
    box = mailbox.mbox(path, create=False)
    try:
        for index, key in enumerate(box.iterkeys()):
            yield Incoming(f"{path}#{index + 1}", box.get_bytes(key))
    finally:
        box.close()


def _is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def _read_maildir(path: Path) -> Iterator[Incoming]:
    for sub in ("new", "cur"):
        for child in sorted((path / sub).iterdir()):
            if child.is_file():
                yield Incoming(str(child), child.read_bytes())
