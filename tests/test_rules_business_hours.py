"""`business_hours: CALENDAR`: routing by whether the desk (a calendar of rules/sla.yaml)
was open when the mail arrived; checked at load, applied to real tickets, and shown by
`maild rules test --at`."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maild.cli import main
from maild.clock import FixedClock
from maild.pipeline.parse import parse
from maild.rules import RuleError, load_rules
from maild.sla.policy import load_policies
from maild.types import Envelope, MailClass
from tests.conftest import AppFactory, deliver, make_mail
from tests.test_routing import show

SLA = """
calendars:
  budapest:
    timezone: Europe/Budapest
    hours: {mon-fri: "09:00-17:00"}
    closed: [2026-03-04]
  newyork:
    timezone: America/New_York
    hours: {mon-fri: "09:00-17:00"}
policies: {}
"""

ROUTING = """
rules:
  - name: after hours
    when: {not: {business_hours: budapest}}
    then: {tags: [after-hours]}
  - name: someone is in
    when: {business_hours: [budapest, newyork]}
    then: {queue: staffed}
"""

# 2026-03-02 is a Monday; Budapest is UTC+1 and New York UTC-5 in early March.
MONDAY_10_BUDAPEST = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MONDAY_18_BUDAPEST = datetime(2026, 3, 2, 17, 0, tzinfo=UTC)  # 12:00 in New York
SATURDAY = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
CLOSED_WEDNESDAY = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)  # 10:00 in New York


def rules_dir(tmp_path: Path, routing: str = ROUTING) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    (folder / "sla.yaml").write_text(textwrap.dedent(SLA), encoding="utf-8")
    (folder / "routing.yaml").write_text(textwrap.dedent(routing), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("received_at", "tags", "queue"),
    [
        (MONDAY_10_BUDAPEST, (), "staffed"),
        (MONDAY_18_BUDAPEST, ("after-hours",), "staffed"),  # New York is open
        (SATURDAY, ("after-hours",), None),
        (CLOSED_WEDNESDAY, ("after-hours",), "staffed"),  # a closed date in Budapest only
    ],
)
def test_the_calendars_open_when_the_mail_arrived(
    tmp_path: Path, received_at: datetime, tags: tuple[str, ...], queue: str | None
) -> None:
    folder = rules_dir(tmp_path)
    rules = load_rules(folder)
    assert rules.asks("business_hours")
    facts = rules.facts(
        parse(make_mail()),
        Envelope(),
        mail_class=MailClass.HUMAN,
        is_reply=False,
        received_at=received_at,
        calendars=load_policies(folder).calendars,
    )
    decision = rules.decide(facts)
    assert (decision.tags, decision.queue) == (tags, queue)
    assert rules.explain(facts).decision == decision


def test_an_unknown_calendar_is_named_with_file_line_and_a_suggestion(tmp_path: Path) -> None:
    folder = rules_dir(
        tmp_path, "rules:\n  - {name: x, when: {business_hours: budpest}, then: {queue: q}}\n"
    )
    with pytest.raises(RuleError) as caught:
        load_rules(folder)
    assert [str(i).replace(f"{folder}/", "") for i in caught.value.issues] == [
        "routing.yaml:2:38: unknown calendar 'budpest' (did you mean 'budapest'?)"
    ]


def test_without_sla_yaml_there_is_no_calendar_to_be_open_in(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "routing.yaml").write_text(
        "rules:\n  - {name: x, when: {business_hours: budapest}, then: {queue: q}}\n"
    )
    with pytest.raises(RuleError, match="unknown calendar 'budapest'"):
        load_rules(folder)


def test_tickets_are_routed_by_the_time_the_mail_was_received(
    make_app: AppFactory, clock: FixedClock, tmp_path: Path
) -> None:
    app = make_app(paths={"rules": str(rules_dir(tmp_path))})

    def filed_at(moment: datetime, subject: str) -> tuple[list[str], str | None]:
        clock.set(moment)
        number = deliver(app, make_mail(subject=subject)).ticket_number
        detail = show(app, number or "")
        return detail["tags"], detail["queue"]

    assert filed_at(MONDAY_10_BUDAPEST, "in hours") == ([], "staffed")
    assert filed_at(SATURDAY, "weekend") == (["after-hours"], None)


def test_rules_test_at_a_given_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = rules_dir(tmp_path)
    mail = tmp_path / "mail.eml"
    mail.write_bytes(make_mail())
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nrules = "{folder}"\n')

    def queue_at(moment: str) -> object:
        code = main(["rules", "test", "--json", "--at", moment, "--config", str(config), str(mail)])
        assert code == 0
        return json.loads(capsys.readouterr().out)["ticket"]["queue"]

    assert queue_at("2026-03-02T10:00:00+01:00") == "staffed"
    assert queue_at("2026-03-07T12:00:00") is None  # UTC without a zone: Saturday
