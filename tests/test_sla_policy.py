"""SLA policies: matching, the ladder's timing and catch-up; the notices' MIME; the daemon's job."""

from __future__ import annotations

import email
import json
import subprocess
from datetime import UTC, datetime, timedelta
from email.policy import default
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maild.config import parse_settings
from maild.sla import clocks as sla_clocks
from maild.sla.clocks import Clocks
from maild.sla.notify import Notifier
from maild.sla.policy import PolicySet, TicketFacts, load_policies
from tests.daemon import MAILD, Daemon, write_config
from tests.test_sla import SLA, TEAMS, write_rules

POLICIES = """
calendars:
  ny:
    timezone: America/New_York
    hours: {mon-fri: ["08:00-12:00", "13:00-17:00"], sat: "22:00-06:00"}
    holidays: US-CA
policies:
  vip:
    time: calendar
    targets: {first_response: 30m}
  billing:
    calendar: ny
    match: {queue: billing, priority: [high, urgent]}
    targets: {first_response: {high: 2h, urgent: 1h}}
  bigcorp:
    calendar: ny
    match: {customer_domain: bigcorp.example, type: incident}
    catch_up: all
    targets: {first_response: 2h}
    escalation:
      - {name: half, target: first_response, at: 0.5}
      - {name: due, target: first_response, after: 0}
  fallback:
    calendar: ny
    match: {}
    targets: {resolution: 2d}
"""

_SHIPPED = load_policies(Path(__file__).resolve().parents[1] / "rules")


def facts(**values: str | None) -> TicketFacts:
    base: dict[str, str | None] = {
        "queue": None,
        "priority": "normal",
        "type": None,
        "customer_domain": "x.example",
    }
    base.update(values)
    return TicketFacts(
        queue=base["queue"],
        priority=str(base["priority"]),
        type=base["type"],
        customer_domain=str(base["customer_domain"]),
    )


@pytest.fixture
def policies(tmp_path: Path) -> PolicySet:
    (tmp_path / "sla.yaml").write_text(POLICIES)
    return load_policies(tmp_path)


def test_policy_matching_and_naming(policies: PolicySet) -> None:
    def chosen(named: str | None = None, **values: str) -> str | None:
        found = policies.choose(named, facts(**values))
        return found.name if found else None

    assert chosen(queue="billing", priority="high") == "billing"
    assert chosen(queue="billing", priority="low") == "fallback"
    assert chosen(customer_domain="bigcorp.example", type="incident") == "bigcorp"
    assert chosen(customer_domain="bigcorp.example") == "fallback"
    assert chosen("vip", queue="billing", priority="high") == "vip", "a routing rule's `sla`"
    assert chosen() == "fallback"
    vip = policies.policies["vip"]
    assert vip.calendar.always


def test_calendar_time_policy_counts_nights(policies: PolicySet) -> None:
    vip = policies.policies["vip"]
    saturday_night = datetime(2026, 3, 7, 23, 50, tzinfo=UTC)
    clocks, events = sla_clocks.update(
        Clocks(), vip, None, status="new", priority="normal", now=saturday_night
    )
    assert clocks.first_response_due_at == saturday_night + timedelta(minutes=30)
    assert events[0][0] == "sla_started"


def test_catch_up_all_fires_every_missed_stage(policies: PolicySet) -> None:
    bigcorp = policies.policies["bigcorp"]
    monday = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 09:00 in New York
    clocks, _ = sla_clocks.update(
        Clocks(), bigcorp, None, status="new", priority="normal", now=monday
    )
    assert clocks.first_response_due_at == datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
    late = sla_clocks.plan(clocks, bigcorp, set(), datetime(2026, 3, 3, 0, 0, tzinfo=UTC))
    assert [o.stage.name for o in late.fire] == ["half", "due"]
    assert late.skip == ()
    done = {o.key for o in late.fire}
    assert late.next_check(done) is None


@settings(max_examples=60, deadline=None)
@given(
    start=st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
    priority=st.sampled_from(["low", "normal", "high", "urgent"]),
    replied=st.booleans(),
    fired_bits=st.integers(min_value=0, max_value=2**12 - 1),
)
def test_next_check_is_the_earliest_occurrence_not_fired(
    start: datetime, priority: str, replied: bool, fired_bits: int
) -> None:
    """Every stage and repeat of the shipped policy, any subset fired: next_check (which
    works out only each stage's first occurrence left) equals the minimum over all."""
    standard = _SHIPPED.policies["standard"]
    clocks, _ = sla_clocks.update(
        Clocks(), standard, None, status="new", priority=priority, now=start
    )
    if replied:
        clocks, _ = sla_clocks.update(
            clocks,
            standard,
            standard,
            status="open",
            priority=priority,
            now=start + timedelta(hours=1),
            customer_replied=True,
        )
    every = sla_clocks.occurrences(clocks, standard)
    fired = {o.key for n, o in enumerate(every) if fired_bits >> n & 1}
    expected = min((o.at for o in every if o.key not in fired), default=None)
    assert sla_clocks.next_check(clocks, standard, fired) == expected


def test_priority_change_keeps_the_time_used(policies: PolicySet) -> None:
    billing = policies.policies["billing"]
    start = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # Monday 09:00 New York
    clocks, _ = sla_clocks.update(Clocks(), billing, None, status="new", priority="high", now=start)
    assert clocks.first_response_due_at == datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
    # 30 business minutes later it becomes urgent (1 h): 30 minutes are left.
    later = start + timedelta(minutes=30)
    moved, events = sla_clocks.update(
        clocks, billing, billing, status="open", priority="urgent", now=later
    )
    assert moved.first_response_due_at == later + timedelta(minutes=30)
    assert [kind for kind, _ in events] == ["sla_retargeted"]


def test_notices_are_well_formed_mime_with_encoded_subjects(tmp_path: Path) -> None:
    templates = tmp_path / "templates" / "agent"
    templates.mkdir(parents=True)
    (templates / "sla_warning.subject.j2").write_text("Határidő: {{ ticket.subject }}")
    (templates / "sla_warning.txt.j2").write_text("Szia {{ recipient.address }}, ő vár.\n")
    (templates / "sla_warning.html.j2").write_text("<p>{{ ticket.subject }}</p>\n")
    settings = parse_settings(
        {"paths": {"templates": str(tmp_path / "templates")}, "outbound": {"enabled": True}},
        "<test>",
    )
    subject = "Nyomtató <ég> " + "árvíztűrő tükörfúrógép " * 4
    row = Notifier(settings).compose(
        "agent/sla_warning",
        {"ticket": {"subject": subject}, "recipient": {"address": "anna@example.com"}},
        "anna@example.com",
        7,
        datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
    )
    raw: bytes = row["raw"]
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=default)
    assert parsed["Subject"] == f"Határidő: {subject.strip()}"
    assert parsed["Message-ID"] == row["message_id"]
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed.get_content_type() == "multipart/alternative"
    plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content() == "Szia anna@example.com, ő vár.\n"
    assert "&lt;ég&gt;" in html.get_content(), "HTML parts autoescape"
    assert not parsed.defects


def test_the_shipped_policies_load() -> None:
    standard = _SHIPPED.policies["standard"]
    assert standard.calendar.timezone == "Europe/Budapest"
    assert [s.name for s in standard.stages][:2] == ["remind", "breach"]


def test_the_daemon_sweeps_on_its_interval(
    tmp_path: Path, db_url: str, daemons: list[Daemon]
) -> None:
    # Calendar time, so the stage falls due in real time a moment after the ticket opens.
    quick = SLA.replace("calendar: budapest\n    match: {}", "time: calendar\n    match: {}")
    quick = quick.replace("first_response: 4h", "first_response: 1m").replace("at: 75%", "at: 1%")
    rules = write_rules(tmp_path, quick)
    (rules / "teams.yaml").write_text(TEAMS)
    config = write_config(
        tmp_path,
        db_url,
        paths={"rules": str(rules), "templates": str(tmp_path / "templates")},
        sla={"interval": 0.2},
        outbound={"enabled": True, "port": 1},
    )
    daemon = Daemon(config, tmp_path).start()
    daemons.append(daemon)
    from tests.conftest import make_mail

    ingest = subprocess.run(
        [MAILD, "ingest", "-", "--config", str(config.path)],
        input=make_mail(),
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert ingest.returncode == 0, ingest.stderr
    daemon.wait_for(lambda e: e.get("event") == "SLA sweep" and e.get("fired") == 1)
    assert daemon.terminate() == 0
    status = subprocess.run(
        [MAILD, "sla", "status", "1", "--json", "--config", str(config.path)],
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    [item] = json.loads(status.stdout)
    assert next((s["stage"], s["outcome"]) for s in item["stages"]) == ("remind", "fired")


def test_routing_rules_may_name_only_policies_of_sla_yaml(tmp_path: Path) -> None:
    from maild.rules import RuleError, load_rules

    rules = write_rules(tmp_path)
    routing = "rules:\n  - name: vip\n    when: {from_domain: [bigcorp.example]}\n"
    (rules / "routing.yaml").write_text(routing + "    then: {sla: standard}\n")
    assert len(load_rules(rules).rules) == 1
    (rules / "routing.yaml").write_text(routing + "    then: {sla: standrd}\n")
    with pytest.raises(
        RuleError,
        match=r"routing.yaml:4:17: unknown SLA policy 'standrd' \(did you mean 'standard'\?\)",
    ):
        load_rules(rules)
