"""Routing rules applied to real tickets on SQLite and PostgreSQL: fields, tags, assignment,
events, quarantine/drop, follow-up rules, and broken rules refusing to start."""

from __future__ import annotations

import io
import textwrap
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from maild import views
from maild.app import App
from maild.cli import EX_CONFIG, main
from maild.db import queries
from maild.rules import matchers
from maild.types import SpoolState
from tests.conftest import AppFactory, deliver, make_mail

TEAMS = """
teams:
  - {name: network, tier: 2, lead: lead@example.com, members: [ann@example.com, bob@example.com]}
agents:
  - {address: lead@example.com, name: Lead}
  - {address: ann@example.com, name: Ann}
  - {address: bob@example.com, name: Bob}
"""

ROUTING = """
rules:
  - name: viruses
    when: {attachment: {name: {glob: '*.exe'}}}
    then: {quarantine: executable attachment}
    stop: true
  - name: newsletters
    when: {header: {name: List-Id, exists: true}}
    then: {drop: newsletter}
    stop: true
  - name: outage
    when: {subject: {contains: outage}}
    then:
      priority: urgent
      type: incident
      tags: [outage, network]
      assign: {team: network, by: round_robin}
  - name: escalate replies that shout
    on: [reply]
    when: {subject: {contains: URGENT}}
    then: {priority: high, tags: {add: [shouting], remove: [network]}}
"""


def rules_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    (folder / "teams.yaml").write_text(textwrap.dedent(TEAMS))
    (folder / "routing.yaml").write_text(textwrap.dedent(ROUTING))
    return folder


def show(app: App, number: str) -> dict[str, Any]:
    with app.db.transaction() as session:
        ticket = views.find_ticket(session, number)
        assert ticket is not None
        return views.ticket_detail(session, ticket, app.numbering)


def test_rule_sets_fields_tags_and_assigns_round_robin(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(paths={"rules": str(rules_dir(tmp_path))})
    numbers = [
        deliver(app, make_mail(sender=f"c{i}@x.example", subject=f"outage {i}")).ticket_number
        for i in range(3)
    ]
    details = [show(app, n or "") for n in numbers]
    assert [d["assignee"] for d in details] == [
        "ann@example.com",
        "bob@example.com",
        "ann@example.com",
    ]
    first = details[0]
    assert (first["priority"], first["type"], first["team"], first["tier"]) == (
        "urgent",
        "incident",
        "network",
        2,
    )
    assert first["tags"] == ["outage", "network"]
    fired = [e for e in first["events"] if e["kind"] == "rule_fired"]
    assert [e["data"]["name"] for e in fired] == ["outage"]
    assert fired[0]["data"]["matched"][0]["seen"]
    assert any(e["kind"] == "assigned" for e in first["events"])


def test_reply_rules_run_on_follow_ups_only(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(paths={"rules": str(rules_dir(tmp_path))})
    new = deliver(app, make_mail(subject="URGENT outage", message_id="<u1@x.example>"))
    assert show(app, new.ticket_number or "")["priority"] == "urgent"  # the reply rule did not
    deliver(app, make_mail(subject="Re: URGENT outage", in_reply_to="<u1@x.example>"))
    detail = show(app, new.ticket_number or "")
    assert detail["priority"] == "high"
    assert detail["tags"] == ["outage", "shouting"]


def test_quarantine_and_drop_by_rule(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(paths={"rules": str(rules_dir(tmp_path))})
    from email.message import EmailMessage
    from email.policy import SMTP

    mail = EmailMessage()
    mail["From"] = "a@x.example"
    mail["To"] = "support@example.com"
    mail["Subject"] = "invoice"
    mail["Message-ID"] = "<exe@x.example>"
    mail.set_content("see attached")
    mail.add_attachment(
        b"MZ...", maintype="application", subtype="octet-stream", filename="invoice.exe"
    )
    quarantined = deliver(app, mail.as_bytes(policy=SMTP))
    assert (quarantined.state, quarantined.step, quarantined.reason) == (
        SpoolState.QUARANTINED,
        "route",
        "executable attachment",
    )
    dropped = deliver(app, make_mail(headers={"List-Id": "<news.x.example>"}))
    assert (dropped.state, dropped.step, dropped.reason) == (
        SpoolState.IGNORED,
        "route",
        "newsletter",
    )


def test_sender_is_customer_once_the_sender_is_a_known_contact(
    make_app: AppFactory, tmp_path: Path
) -> None:
    folder = rules_dir(tmp_path)
    (folder / "routing.yaml").write_text(
        textwrap.dedent(
            """
            rules:
              - {name: known, when: {sender_is: customer}, then: {queue: customers}}
              - {name: strangers, when: {sender_is: unknown}, then: {queue: strangers}}
            """
        )
    )
    app = make_app(paths={"rules": str(folder)})
    assert app.rules.current.asks("sender_is")
    first = deliver(app, make_mail(sender="new@x.example", subject="first"))
    second = deliver(app, make_mail(sender="new@x.example", subject="second"))
    queues = [show(app, o.ticket_number or "")["queue"] for o in (first, second)]
    assert queues == ["strangers", "customers"]


def test_known_contacts_are_not_looked_up_for_rules_that_do_not_ask(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(paths={"rules": str(rules_dir(tmp_path))})
    assert not app.rules.current.asks("sender_is")


def test_a_regex_that_backtracks_without_end_quarantines_the_mail_as_timeout(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matchers, "REGEX_SECONDS", 0.1)
    folder = rules_dir(tmp_path)
    (folder / "routing.yaml").write_text(
        "rules:\n  - {name: greedy, when: {subject: {regex: '(a|aa)+$'}}, then: {queue: a}}\n"
    )
    app = make_app(paths={"rules": str(folder)})
    stuck = deliver(app, make_mail(subject="a" * 40 + "b"))
    assert (stuck.state, stuck.step) == (SpoolState.QUARANTINED, "route")
    assert (stuck.reason or "").startswith("timeout: regex '(a|aa)+$'"), stuck.reason
    # The worker is free again at once, and the pattern still works where it can.
    fine = deliver(app, make_mail(subject="aaaa"))
    assert show(app, fine.ticket_number or "")["queue"] == "a"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_round_robin_lines_up_instances_assigning_in_one_team_at_once(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(paths={"rules": str(rules_dir(tmp_path))})
    first = deliver(app, make_mail(sender="a@x.example", subject="outage a"))
    assert show(app, first.ticket_number or "")["assignee"] == "ann@example.com"
    second: list[str] = []

    def assign_next() -> None:
        outcome = deliver(app, make_mail(sender="b@x.example", subject="outage b"))
        second.append(show(app, outcome.ticket_number or "")["assignee"])

    with app.db.begin() as other:
        # Another instance is assigning in the team: it has read the last assignee
        # (Ann), is giving its ticket to Bob, and has not committed yet.
        assert queries.SqlAgentLoad(other).last_assigned("network") == "ann@example.com"
        other.execute(
            text(
                "UPDATE ticket SET assignee = 'bob@example.com', assigned_at = :at "
                "WHERE number = :number"
            ),
            {"at": app.clock.now() + timedelta(seconds=1), "number": first.ticket_number},
        )
        racer = threading.Thread(target=assign_next)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # waiting for the other assignment, not reading past it
    racer.join(30)
    # Bob was the last one assigned: the rotation goes on with Ann, not Bob again.
    assert second == ["ann@example.com"]


def test_least_loaded_counts_open_tickets(make_app: AppFactory, tmp_path: Path) -> None:
    folder = rules_dir(tmp_path)
    text = (folder / "routing.yaml").read_text().replace("round_robin", "least_loaded")
    (folder / "routing.yaml").write_text(text)
    app = make_app(paths={"rules": str(folder)})
    first = deliver(app, make_mail(sender="a@x.example", subject="outage a"))
    assert show(app, first.ticket_number or "")["assignee"] == "ann@example.com"
    # Ann has one open ticket, Bob none: Bob is next, then they are even again.
    second = deliver(app, make_mail(sender="b@x.example", subject="outage b"))
    assert show(app, second.ticket_number or "")["assignee"] == "bob@example.com"


def test_broken_rules_refuse_to_start_with_file_and_line(tmp_path: Path, db_url: str) -> None:
    folder = rules_dir(tmp_path)
    (folder / "routing.yaml").write_text("rules:\n  - name: x\n    then: {priorty: high}\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[paths]\nrules = "{folder}"\n')
    mail = tmp_path / "m.eml"
    mail.write_bytes(make_mail())
    err = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(err):
        code = main(["ingest", "--config", str(config), str(mail)])
    assert code == EX_CONFIG
    assert f"{folder / 'routing.yaml'}:3:" in err.getvalue()
    assert "priority" in err.getvalue()  # the did-you-mean suggestion
