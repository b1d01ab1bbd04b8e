"""A private PostgreSQL cluster for tests that stop or restart the server.

The shared server at 127.0.0.1:5432 serves every other test and other people: a test that
takes the database away must have its own. `private_postgres()` runs `initdb` into a
temporary directory and `pg_ctl` on a free loopback port (trust auth, the unix socket in
that directory), and stops and removes it afterwards. The binaries are found at run time
(`pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin); without them the test
skips, or fails under MAILD_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tests.conftest import need
from tests.daemon import free_port

# `fast` rolls back open transactions and checkpoints, as `pg_ctlcluster … restart` does;
# `immediate` kills the server processes without a checkpoint, like a crash (recovery
# replays the WAL on the next start).
Mode = Literal["smart", "fast", "immediate"]

# initdb and postgres refuse to run as root.
SERVICE_USER = "postgres"


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            found = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            )
            candidates.append(Path(found.stdout.strip()))
    # Debian's packages keep the server binaries out of PATH, one directory per version.
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates.extend(sorted(versions, key=_version, reverse=True))
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


class PrivatePostgres:
    """One cluster in `root`: data in `root/data`, socket and log beside it."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self._as_service_user = os.geteuid() == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        if self._as_service_user:
            entry = pwd.getpwnam(SERVICE_USER)
            shutil.chown(self.root, entry.pw_uid, entry.pw_gid)
        # --no-sync: a throwaway cluster need not survive a power cut.
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        # -l (here and in restart): else the server would log to, and hold open, the pipe
        # that _run reads to its end.
        self._pg_ctl("start", "-l", str(self.log), "-o", self._options())

    def stop(self, mode: Mode = "fast") -> None:
        """Stop and wait until the server is gone: from then on, connecting is refused."""
        self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: Mode = "fast") -> None:
        """Stop (`mode`), start again, and wait until it accepts connections."""
        self._pg_ctl("restart", "-m", mode, "-l", str(self.log), "-o", self._options())

    def _options(self) -> str:
        # fsync off: the server may crash in a test (-m immediate), the machine does not;
        # the page cache keeps every write across a server crash.
        return f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self._as_service_user:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        # cwd: the service user may not be allowed into the caller's directory.
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n{log}"
            )


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private cluster; stopped (immediately: nothing in it is kept) and removed
    on exit. Skips, or fails under MAILD_REQUIRE_SERVICES=1, when PostgreSQL is missing."""
    bindir = find_bindir()
    need(bindir is not None, "PostgreSQL server binaries (initdb, pg_ctl) not found")
    assert bindir is not None
    if os.geteuid() == 0:
        need(_user_exists(SERVICE_USER), f"running as root and no '{SERVICE_USER}' user")
    # mkdtemp in the system temp directory: short enough for a unix socket path, and
    # reachable by the service user (pytest's tmp_path is private to root).
    root = Path(tempfile.mkdtemp(prefix="maild-pg-"))
    try:
        cluster = PrivatePostgres(bindir, root)
        cluster.init()
        try:
            cluster.start()
            yield cluster
        finally:
            with contextlib.suppress(RuntimeError):  # not running (stopped, or never started)
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _version(bindir: Path) -> list[int]:
    return [int(part) for part in bindir.parent.name.split(".") if part.isdigit()]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
