"""The whole round trip over real SMTP through `maild run`: a customer's mail, the agent's
notification at the relay sink, the agent's reply sent back to maild, the customer's copy
at the sink, and the customer's answer on the same ticket. SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import smtplib
from email.message import EmailMessage as Mail
from pathlib import Path
from typing import Any

import pytest

from maild.cli import EX_OK, main
from tests.conftest import make_mail
from tests.daemon import Daemon, write_config
from tests.test_agents import (
    ALICE,
    ANNA,
    CAROL,
    SECRET,
    SUPPORT,
    body,
    rules_dir,
)
from tests.test_outbox import Sink

KEY_VARIABLE = "MAILD_TEST_AGENT_KEY"


@pytest.fixture
def sink() -> Any:
    server = Sink().start()
    yield server
    server.stop()


def smtp_send(daemon: Daemon, mail_from: str, rcpt: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.sendmail(mail_from, [rcpt], raw)


def collect(sink: Sink, n: int) -> dict[tuple[str, str], Mail]:
    """The next `n` mails at the sink, by (recipient, first word of the subject)."""
    found: dict[tuple[str, str], Mail] = {}
    for _ in range(n):
        _, rcpts, mail = sink.next_mail(timeout=60)
        found[rcpts[0], str(mail["Subject"]).split(":")[0]] = mail
    return found


def show(config: Path, number: str) -> dict[str, Any]:
    out = io.StringIO()
    assert main(["tickets", "show", number, "--json", "--config", str(config)], stdout=out) == EX_OK
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def test_round_trip_customer_agent_customer(
    tmp_path: Path, db_url: str, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_VARIABLE, SECRET)  # the secret comes from the environment
    config = write_config(
        tmp_path,
        db_url,
        outbound={"enabled": True, "host": "127.0.0.1", "port": sink.port, "interval": 0.2},
        paths={"rules": str(rules_dir(tmp_path)), "templates": str(tmp_path / "none")},
        agents={"internal_address": "support-comment@example.com"},
    )
    with config.path.open("a") as handle:
        handle.write(f'[[agents.keys]]\nid = 1\nsecret_env = "{KEY_VARIABLE}"\n')
    daemon = Daemon(config, tmp_path).start()
    try:
        first = "<round-1@customer.example>"
        smtp_send(
            daemon,
            ALICE,
            SUPPORT,
            make_mail(subject="The printer is broken", message_id=first, cc=CAROL),
        )
        # The acknowledgement to the customer and the notification to the assignee.
        mails = collect(sink, 2)
        notification = mails[ANNA, "New ticket"]
        assert (ALICE, "Re") in mails
        reply_to = str(notification["Reply-To"])
        assert reply_to.startswith("support+t1.") and reply_to.endswith("@example.com")
        assert "the printer is on fire" in body(notification)

        # Anna answers from her mail client: commands on top, the notification quoted.
        quoted = "\n".join(f"> {line}" for line in body(notification).splitlines())
        answer = make_mail(
            sender=f"Anna Kovács <{ANNA}>",
            to=reply_to,
            subject=f"Re: {notification['Subject']}",
            in_reply_to=str(notification["Message-ID"]),
            body="#status pending\n"
            + "Hello Alice,\n\nplease switch it off and on again.\n\nAnna\n\n"
            + f"On Mon, 2 Mar 2026 at 09:00, {SUPPORT} wrote:\n{quoted}\n",
        )
        smtp_send(daemon, ANNA, reply_to, answer)
        relayed = collect(sink, 2)  # to the requester and the cc'd contact
        to_alice = relayed[ALICE, "Re"]
        assert (CAROL, "Re") in relayed
        raw = to_alice.as_string()
        assert to_alice["From"].addresses[0].addr_spec == SUPPORT
        assert to_alice["In-Reply-To"] == first
        assert "[#1]" in str(to_alice["Subject"])
        text = body(to_alice)
        assert "please switch it off and on again." in text
        assert ANNA not in raw and "support+t1" not in raw  # no agent address, no token
        assert "the printer is on fire" not in text and "#status" not in text
        assert show(config.path, "1")["status"] == "pending"

        # The customer answers the relayed mail: same ticket, open again, Anna told.
        smtp_send(
            daemon,
            ALICE,
            SUPPORT,
            make_mail(
                subject=f"Re: {to_alice['Subject']}",
                in_reply_to=str(to_alice["Message-ID"]),
                body="It works again, thanks!\n",
            ),
        )
        told = collect(sink, 1)
        assert "It works again, thanks!" in body(told[ANNA, "Customer replied"])
        ticket = show(config.path, "1")
        assert ticket["status"] == "open"
        kinds = [(m["direction"], m["kind"]) for m in ticket["messages"]]
        assert kinds.count(("in", "customer")) == 2 and ("in", "agent_reply") in kinds
        assert ("out", "agent_reply") in kinds
        daemon.wait_for(lambda e: e.get("event") == "outbound mail", n=5)
        assert daemon.terminate() == 0
    finally:
        daemon.stop_quietly()
