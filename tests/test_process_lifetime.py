"""No process outlives the daemon: worker processes and parse processes die with it,
even when it is killed with SIGKILL and has no chance to stop them."""

from __future__ import annotations

import os
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import make_mail
from tests.daemon import MAILD, Daemon
from tests.test_smtp import start
from tests.test_timeout import slow_mail


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


def wait_until_gone(family: set[int]) -> None:
    deadline = time.monotonic() + 10
    while alive(family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(family) == set(), [
        Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
        for pid in alive(family)
    ]


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

    wait_until_gone(family)
    assert os.getpid() not in family


def test_killing_an_ingest_leaves_no_parse_process_behind(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for n in range(40):  # half a second of parsing each: the ingest is still busy when killed
        (inbox / f"{n}.eml").write_bytes(slow_mail().replace(b"<slow@", f"<slow-{n}@".encode()))
    ingest = subprocess.Popen(
        [MAILD, "ingest", str(inbox)],
        cwd=tmp_path,
        env={**os.environ, "MAILD_DATABASE_URL": f"sqlite:///{tmp_path / 'maild.db'}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (family := descendants(ingest.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert family, "the ingest started no parse process"
        assert ingest.poll() is None, "the ingest ended before it could be killed"
    finally:
        ingest.kill()
        ingest.wait(30)

    wait_until_gone(family)
