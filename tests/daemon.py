"""Run `maild run` as a real subprocess on loopback and follow its event log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAILD = str(Path(sys.executable).parent / "maild")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class DaemonConfig:
    path: Path
    smtp_port: int
    http_port: int


def write_config(directory: Path, db_url: str, **sections: Any) -> DaemonConfig:
    """A config.toml for a test daemon: free ports, fast polling, JSON logs."""
    smtp_port = free_port()
    http_port = free_port()
    base: dict[str, dict[str, Any]] = {
        "database": {"url": db_url, "sqlite_busy_timeout_ms": 2000},
        "logging": {"format": "json", "level": "INFO"},
        "daemon": {"workers": 1, "poll_interval": 0.5},
        "http": {"enabled": True, "port": http_port},
        "smtp": {"shutdown_grace": 10.0},
        "mail": {"support_addresses": ["support@example.com", "billing@example.com"]},
    }
    for name, values in sections.items():
        if name != "listener":
            base.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    listeners = sections.get("listener") or {"protocol": "smtp", "port": smtp_port}
    for listener in listeners if isinstance(listeners, list) else [listeners]:
        lines.append("[[listener]]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in listener.items())
    path = directory / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return DaemonConfig(path, smtp_port, http_port)


class Daemon:
    """A `maild run` process whose JSON log lines can be awaited."""

    def __init__(self, config: DaemonConfig, cwd: Path, args: tuple[str, ...] = ()) -> None:
        self.config = config.path
        self.args = args  # extra `maild run` arguments, e.g. ("--role", "receive")
        self.smtp_port = config.smtp_port
        self.http_port = config.http_port
        self.cwd = cwd
        self.events: list[dict[str, Any]] = []
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Daemon:
        self.process = subprocess.Popen(
            [MAILD, "run", "--config", str(self.config), *self.args],
            cwd=self.cwd,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()
        self.wait_for(lambda e: e.get("event") == "ready", timeout=timeout)
        return self

    def _pump(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._changed:
                self.stderr_lines.append(line)
                with contextlib.suppress(json.JSONDecodeError):  # tracebacks, warnings
                    self.events.append(json.loads(line))
                self._changed.notify_all()
        process.stderr.close()
        with self._changed:
            self._changed.notify_all()

    def count(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        with self._changed:
            return sum(1 for e in self.events if predicate(e))

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], n: int = 1, timeout: float = 30.0
    ) -> None:
        """Block until `n` logged events match, the daemon exits, or the timeout passes."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(1 for e in self.events if predicate(e)) < n:
                remaining = deadline - time.monotonic()
                exited = self.process is not None and self.process.poll() is not None
                if remaining <= 0 or exited:
                    tail = "\n".join(self.stderr_lines[-30:])
                    raise AssertionError(
                        f"daemon never logged the event (exited={exited}):\n{tail}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def processed(self, n: int, timeout: float = 60.0) -> None:
        self.wait_for(lambda e: e.get("event") == "mail processed", n=n, timeout=timeout)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
