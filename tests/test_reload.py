"""A running daemon picks up rule edits (file change or SIGHUP); a broken edit keeps the
last good rules in force, and a good one applies to the next mail."""

from __future__ import annotations

import signal
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_mail
from tests.daemon import MAILD, Daemon, write_config

RULE = "rules:\n  - name: route\n    then: {{queue: {queue}}}\n"


@pytest.fixture
def daemon(tmp_path: Path, db_url: str) -> Iterator[Daemon]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "routing.yaml").write_text(RULE.format(queue="first"))
    config = write_config(tmp_path, db_url, paths={"rules": str(rules)})
    running = Daemon(config, tmp_path).start()
    yield running
    running.stop_quietly()


def send_and_queue(daemon: Daemon, tmp_path: Path, n: int) -> str:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.sendmail("a@x.example", ["support@example.com"], make_mail(sender=f"c{n}@x.example"))
    daemon.processed(n)
    listing = subprocess.run(
        [MAILD, "tickets", "list", "--config", str(daemon.config), "--json"],
        capture_output=True,
        check=True,
        cwd=tmp_path,
        timeout=60,
    )
    import json

    return str(json.loads(listing.stdout)[-1]["queue"])


def reloaded(e: dict[str, object]) -> bool:
    return e.get("event") == "rules reloaded"


def failed(e: dict[str, object]) -> bool:
    return str(e.get("event", "")).startswith("rules reload failed")


def test_file_edits_reload_and_broken_edits_keep_the_last_good_rules(
    daemon: Daemon, tmp_path: Path
) -> None:
    routing = tmp_path / "rules" / "routing.yaml"
    assert send_and_queue(daemon, tmp_path, 1) == "first"

    routing.write_text("rules:\n  - name: route\n    then: {queue: [not, a, name]}\n")
    daemon.wait_for(failed)
    assert send_and_queue(daemon, tmp_path, 2) == "first"

    routing.write_text(RULE.format(queue="second"))
    # The daemon validates, then its worker process reloads too: two events.
    daemon.wait_for(reloaded, n=2)
    assert send_and_queue(daemon, tmp_path, 3) == "second"


def test_sighup_reloads(daemon: Daemon, tmp_path: Path) -> None:
    assert daemon.process is not None
    # A worker that starts after the signal reads the rules fresh anyway; wait for it so
    # the signal is what makes it reload.
    daemon.wait_for(lambda e: e.get("event") == "worker started")
    before = daemon.count(reloaded)
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(reloaded, n=before + 2)
    assert daemon.process.poll() is None
