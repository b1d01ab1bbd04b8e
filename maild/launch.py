"""The `maild` command: the CLI, imported with the garbage collector paused."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """For imports: they build a few hundred thousand objects, none of them garbage,
    and the collections the interpreter runs meanwhile took an eighth of their time
    (0.1 s of `maild ingest`'s start)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def main() -> int:
    with collector_paused():
        from maild import cli
    return cli.main()
