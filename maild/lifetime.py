"""Child processes die with the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, even by kill -9.

    A parse process forked by a daemon that was killed would otherwise wait for work
    for ever: it holds both ends of the pipes it reads, so it never sees them close.
    `parent`: the pid that started this process; if that one is gone already (before
    the request could be made), exit now. Linux takes the *thread* that forked for the
    parent: start such processes from a thread that lives as long as they should (the
    main thread, or a worker's own), never from a short-lived helper thread.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)
