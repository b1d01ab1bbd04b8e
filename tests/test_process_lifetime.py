"""No process outlives the daemon: worker processes and parse processes die with it,
even when it is killed with SIGKILL and has no chance to stop them."""

from __future__ import annotations

import os
import smtplib
import time
from pathlib import Path

import pytest

from tests.conftest import make_mail
from tests.daemon import Daemon
from tests.test_smtp import start


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The name in parentheses may hold spaces; the parent pid follows the state.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def descendants(pid: int) -> set[int]:
    found = children(pid)
    for child in list(found):
        found |= descendants(child)
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":  # a zombie has died; only its parent has not looked yet
            living.add(pid)
    return living


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("workers", [0, 1], ids=["thread worker", "worker process"])
def test_killing_the_daemon_leaves_no_process_behind(
    tmp_path: Path, db_url: str, daemons: list[Daemon], workers: int
) -> None:
    daemon = start(daemons, tmp_path, db_url, daemon={"workers": workers, "poll_interval": 0.2})
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=60) as client:
        client.sendmail("c@customer.example", ["support@example.com"], make_mail())
    daemon.processed(1)  # the mail was parsed ahead: the parse processes are running
    assert daemon.process is not None
    family = descendants(daemon.process.pid)
    assert family, "no child processes to watch"

    daemon.kill()

    deadline = time.monotonic() + 10
    while alive(family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(family) == set(), [
        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
        for pid in alive(family)
    ]
    assert os.getpid() not in family
