"""SLA end to end: mail in, `maild sla tick --now`, stages fired once, on SQLite and PostgreSQL."""

from __future__ import annotations

import email
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from maild.app import App
from maild.cli import main
from maild.clock import FixedClock
from maild.config import load_settings, parse_settings
from maild.db.models import Event, Outbox, SlaStage, Ticket
from tests.conftest import T0, AppFactory, deliver, make_mail
from tests.conftest import _truncate as truncate

TEAMS = """
teams:
  - {name: first-line, tier: 1, lead: lea@example.com, members: [anna@example.com]}
  - {name: network, tier: 2, lead: david@example.com, members: [david@example.com, eva@example.com]}
  - {name: experts, tier: 3, lead: xena@example.com, members: [xena@example.com]}
agents:
  - {address: anna@example.com, name: Anna}
  - {address: lea@example.com, name: Lea}
  - {address: david@example.com, name: David}
  - {address: eva@example.com, name: Eva}
  - {address: xena@example.com, name: Xena}
"""
ROUTING = """
rules:
  - name: everything to first line
    when: {subject: {exists: true}}
    then: {assign: {agent: anna@example.com}, team: first-line}
"""
# "First answer within 4 business hours in Budapest, remind at 3, escalate to tier 2 at 4,
# tell the lead", then remind the new team every 4 business hours, twice.
SLA = """
calendars:
  budapest:
    timezone: Europe/Budapest
    hours: {mon-fri: "09:00-17:00"}
    holidays: HU
policies:
  standard:
    calendar: budapest
    match: {}
    targets:
      first_response: 4h
      next_response: 2h
      resolution: 40h
    escalation:
      - name: remind
        target: [first_response, next_response]
        at: 75%
        notify: [{to: assignee, template: agent/sla_warning}]
      - name: breach
        target: [first_response, next_response]
        after: 0
        escalate: true
        notify:
          - {to: assignee, template: agent/sla_breach}
          - {to: lead, template: lead/sla_breach}
          - {to: team, template: agent/sla_breach}
      - name: still-late
        target: first_response
        after: 4h
        every: 4h
        times: 2
        severity: 0
        notify: [{to: team, template: agent/sla_breach}]
      - name: unresolved
        target: resolution
        after: 0
        priority: urgent
        notify: [{to: lead, template: lead/sla_breach}]
"""
# T0 is Monday 2026-03-02 09:00 UTC, 10:00 in Budapest: first response due 14:00 local.
REMIND = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
BREACH = datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
STILL_LATE_1 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)  # +4 business hours: Tue 10:00 local
STILL_LATE_2 = datetime(2026, 3, 3, 13, 0, tzinfo=UTC)
RESOLUTION = datetime(2026, 3, 9, 9, 0, tzinfo=UTC)  # 40 business hours: next Monday 10:00


def write_rules(root: Path, sla: str = SLA) -> Path:
    rules = root / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "teams.yaml").write_text(TEAMS)
    (rules / "routing.yaml").write_text(ROUTING)
    (rules / "sla.yaml").write_text(sla)
    return rules


@pytest.fixture
def setup(make_app: AppFactory, db_url: str, tmp_path: Path) -> tuple[App, Path]:
    rules = write_rules(tmp_path)
    sections: dict[str, Any] = {
        "paths": {"rules": str(rules), "templates": str(tmp_path / "templates")},
        "outbound": {"enabled": True},
    }
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n[paths]\nrules = "{rules}"\n'
        f'templates = "{tmp_path / "templates"}"\n[outbound]\nenabled = true\n'
    )
    return make_app(**sections), config


def load_settings_for(db_url: str, rules: Path) -> Any:
    return parse_settings(
        {
            "database": {"url": db_url},
            "paths": {"rules": str(rules)},
            "outbound": {"enabled": True},
        },
        "<test>",
    )


def tick(config: Path, now: datetime) -> dict[str, Any]:
    """`maild sla tick --now` in process: a fresh App each time, as after a restart."""
    out = io.StringIO()
    code = main(["sla", "tick", "--now", now.isoformat(), "--json", "--config", str(config)], out)
    assert code == 0
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


def mails(app: App) -> list[tuple[str, str | None, email.message.EmailMessage]]:
    with app.db.transaction() as session:
        rows = session.execute(
            select(Outbox.recipient, Outbox.template, Outbox.raw)
            .where(Outbox.template.like("%/sla_%"))
            .order_by(Outbox.id)
        ).all()
    return [
        (r.recipient, r.template, email.message_from_bytes(r.raw, policy=default))  # type: ignore[misc]
        for r in rows
    ]


def ticket(app: App) -> Ticket:
    with app.db.transaction() as session:
        found = session.execute(select(Ticket)).scalars().one()
        session.expunge(found)
        return found


def ledger(app: App) -> list[tuple[str, int, str, int, str]]:
    with app.db.transaction() as session:
        rows = session.execute(
            select(
                SlaStage.target,
                SlaStage.cycle,
                SlaStage.stage,
                SlaStage.occurrence,
                SlaStage.outcome,
            ).order_by(SlaStage.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def text_of(message: email.message.EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_every_stage_fires_once_with_its_template(setup: tuple[App, Path]) -> None:
    app, config = setup
    deliver(app, make_mail(subject="VPN down"))
    created = ticket(app)
    assert created.sla_applied == "standard"
    assert created.first_response_due_at == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
    assert created.next_sla_check_at == REMIND

    assert tick(config, REMIND - timedelta(seconds=1))["fired"] == []
    fired = tick(config, REMIND)["fired"]
    assert [(f["target"], f["stage"]) for f in fired] == [("first_response", "remind")]
    assert tick(config, REMIND + timedelta(minutes=1))["fired"] == [], "sent once"
    [(to, template, warning)] = mails(app)
    assert (to, template) == ("anna@example.com", "agent/sla_warning")
    assert warning["Subject"].startswith("[#1] first response due 2026-03-02 14:00 CET")
    assert "1h 0m of business time left" in text_of(warning)
    assert warning["Auto-Submitted"] == "auto-generated"

    fired = tick(config, BREACH)["fired"]
    assert [f["stage"] for f in fired] == ["breach"]
    escalated = ticket(app)
    assert (escalated.team, escalated.tier, escalated.assignee) == ("network", 2, None)
    sent = {(to, template): msg for to, template, msg in mails(app)[1:]}
    assert set(sent) == {
        ("anna@example.com", "agent/sla_breach"),
        ("lea@example.com", "lead/sla_breach"),
        ("david@example.com", "agent/sla_breach"),
        ("eva@example.com", "agent/sla_breach"),
    }
    lead_text = text_of(sent[("lea@example.com", "lead/sla_breach")])
    assert "your team missed the first response target of ticket [#1]" in lead_text
    assert "Moved to:  network (tier 2), unassigned" in lead_text
    assert "now with network" in sent[("david@example.com", "agent/sla_breach")]["Subject"]

    assert [f["occurrence"] for f in tick(config, STILL_LATE_1)["fired"]] == [0]
    assert [f["occurrence"] for f in tick(config, STILL_LATE_2)["fired"]] == [1]
    assert len(mails(app)) == 5 + 2 + 2

    fired = tick(config, RESOLUTION)["fired"]
    assert [(f["target"], f["stage"]) for f in fired] == [("resolution", "unresolved")]
    final = ticket(app)
    assert final.priority == "urgent"
    assert final.next_sla_check_at is None, "nothing left to fire"
    assert mails(app)[-1][:2] == ("david@example.com", "lead/sla_breach")
    assert tick(config, RESOLUTION + timedelta(days=30))["fired"] == []
    assert [(s[2], s[3], s[4]) for s in ledger(app)] == [
        ("remind", 0, "fired"),
        ("breach", 0, "fired"),
        ("still-late", 0, "fired"),
        ("still-late", 1, "fired"),
        ("unresolved", 0, "fired"),
    ]
    with app.db.transaction() as session:
        kinds = session.scalars(select(Event.kind).where(Event.kind.like("sla%"))).all()
    assert kinds.count("sla_stage_fired") == 5


def test_after_downtime_only_the_most_severe_missed_stage_fires(
    setup: tuple[App, Path],
) -> None:
    app, config = setup
    deliver(app, make_mail())
    # Down from before the reminder until after the first repeat: remind, breach and
    # still-late#1 are all missed; the breach (the most severe) fires alone.
    fired = tick(config, STILL_LATE_1 + timedelta(minutes=5))["fired"]
    assert [(f["stage"], f["occurrence"]) for f in fired] == [("breach", 0)]
    assert {(s[2], s[3], s[4]) for s in ledger(app)} == {
        ("remind", 0, "skipped"),
        ("breach", 0, "fired"),
        ("still-late", 0, "skipped"),
    }
    # The next repeat is neither lost nor doubled across the restart.
    assert tick(config, STILL_LATE_1 + timedelta(minutes=6))["fired"] == []
    assert [(f["stage"], f["occurrence"]) for f in tick(config, STILL_LATE_2)["fired"]] == [
        ("still-late", 1)
    ]


def test_restart_between_stages_neither_repeats_nor_misses(setup: tuple[App, Path]) -> None:
    app, config = setup
    deliver(app, make_mail())
    for at in (REMIND, REMIND, BREACH + timedelta(minutes=1), BREACH + timedelta(minutes=2)):
        tick(config, at)  # each call is a new process' App: the ledger is the memory
    assert [(s[2], s[4]) for s in ledger(app)] == [("remind", "fired"), ("breach", "fired")]
    assert len(mails(app)) == 1 + 4


def test_agent_reply_meets_first_response_and_customer_reply_rearms(
    setup: tuple[App, Path],
) -> None:
    app, config = setup
    first = make_mail(message_id="<q1@customer.example>")
    deliver(app, first)
    with app.db.transaction() as session:
        app.sla_tracker.on_agent_reply(session.connection(), 1, T0 + timedelta(hours=1))
    answered = ticket(app)
    assert answered.first_response_due_at is None
    assert answered.next_response_due_at is None
    assert tick(config, BREACH)["fired"] == [], "met targets do not escalate"

    app.clock.set(datetime(2026, 3, 2, 15, 30, tzinfo=UTC))  # type: ignore[attr-defined]
    deliver(app, make_mail(subject="Re: [#1] Printer on fire", in_reply_to="<q1@customer.example>"))
    rearmed = ticket(app)
    assert rearmed.sla_response_cycle == 1
    # 16:30 local + 2 business hours: 30 minutes today, 90 tomorrow from 09:00.
    assert rearmed.next_response_due_at == datetime(2026, 3, 3, 9, 30, tzinfo=UTC)
    fired = tick(config, datetime(2026, 3, 3, 9, 30, tzinfo=UTC))["fired"]
    assert [(f["target"], f["cycle"], f["stage"]) for f in fired] == [
        ("next_response", 1, "breach")
    ], "the reminder was missed and passed over; the breach fires"


def test_pending_pauses_the_clock_over_the_weekend(setup: tuple[App, Path]) -> None:
    app, config = setup
    friday = datetime(2026, 3, 6, 14, 0, tzinfo=UTC)  # 15:00 local: 2 hours before closing
    app.clock.set(friday)  # type: ignore[attr-defined]
    deliver(app, make_mail())
    assert ticket(app).first_response_due_at == datetime(2026, 3, 9, 10, 0, tzinfo=UTC)

    def set_status(status: str, at: datetime) -> None:
        with app.db.transaction() as session:
            conn = session.connection()
            conn.execute(update(Ticket).where(Ticket.id == 1).values(status=status))
            app.sla_tracker.on_ticket_change(conn, 1, at)

    set_status("pending", friday + timedelta(hours=1))
    paused = ticket(app)
    assert paused.sla_paused_at is not None and paused.next_sla_check_at is None
    assert tick(config, datetime(2026, 3, 9, 12, tzinfo=UTC))["fired"] == []
    # Resumed Monday 10:00 local: paused one business hour on Friday and one on Monday.
    set_status("open", datetime(2026, 3, 9, 9, 0, tzinfo=UTC))
    assert ticket(app).first_response_due_at == datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def test_status_shows_targets_and_fired_stages(setup: tuple[App, Path]) -> None:
    app, config = setup
    deliver(app, make_mail())
    tick(config, REMIND)
    out = io.StringIO()
    args = ["sla", "status", "1", "--json", "--now", REMIND.isoformat(), "--config", str(config)]
    assert main(args, out) == 0
    [item] = json.loads(out.getvalue())
    first = item["targets"][0]
    assert (first["target"], first["elapsed_minutes"], first["allowed_minutes"]) == (
        "first_response",
        180,
        240,
    )
    assert [s["stage"] for s in item["stages"]] == ["remind"]
    assert item["upcoming"][0]["stage"] == "breach"
    out = io.StringIO()
    assert main(["sla", "status", "--config", str(config)], out) == 0
    assert "fired first_response remind#1" in out.getvalue()
    assert main(["sla", "status", "99", "--config", str(config)], io.StringIO()) == 66


def test_two_processes_sweeping_one_postgres_fire_each_stage_once(
    pg_url: str, tmp_path: Path
) -> None:
    truncate(pg_url)
    rules = write_rules(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "{pg_url}"\n[paths]\nrules = "{rules}"\n[outbound]\nenabled = true\n'
    )
    app = App(load_settings(config), clock=FixedClock(T0))
    for i in range(40):
        deliver(app, make_mail(subject=f"Case {i}"))
    config.write_text(config.read_text() + "[sla]\nbatch_size = 3\n")
    command = [sys.executable, "-m", "maild", "sla", "tick", "--now", BREACH.isoformat()]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [*command, "--config", str(config)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    # Both missed the reminder: each ticket gets its breach (4 mails), once in all.
    with app.db.transaction() as session:
        stages = session.scalar(select(func.count()).select_from(SlaStage))
        fired = session.scalar(
            select(func.count()).select_from(SlaStage).where(SlaStage.outcome == "fired")
        )
    assert (stages, fired) == (80, 40)
    assert len(mails(app)) == 40 * 4
    fired_by = [int(out.split(",")[1].split()[0]) for out in outputs]
    assert sum(fired_by) == 40
    app.close()


def test_broken_policies_name_file_and_line_and_keep_the_last_good_set(tmp_path: Path) -> None:
    from maild.rules import RuleError
    from maild.sla.policy import SlaHolder, load_policies

    rules = write_rules(tmp_path)
    holder = SlaHolder.load(rules)
    assert list(holder.current.policies) == ["standard"]
    broken = SLA.replace("at: 75%", "at: 175%").replace("Europe/Budapest", "Europe/Budapset")
    (rules / "sla.yaml").write_text(broken)
    assert list(holder.current.policies) == ["standard"], "the last good set stays"
    assert holder.failed_reloads == 1
    with pytest.raises(RuleError) as caught:
        load_policies(rules)
    where = rules / "sla.yaml"
    assert [str(i) for i in caught.value.issues] == [
        f"{where}:4:15: unknown time zone 'Europe/Budapset'",
        f"{where}:18:13: at: Input should be less than or equal to 1",
    ]
    (rules / "sla.yaml").write_text(SLA.replace("calendar: budapest", "calendar: budapst"))
    with pytest.raises(RuleError, match=r"sla.yaml:9:15: unknown calendar 'budapst' \(did you"):
        load_policies(rules)
    out = io.StringIO()
    assert main(["sla", "check", str(rules)], out) == 78


def test_an_agent_mail_meets_response_targets_only_when_it_is_a_reply(
    setup: tuple[App, Path],
) -> None:
    from maild import spool
    from maild.db.models import Message
    from maild.types import Envelope

    app, _ = setup
    deliver(app, make_mail())

    def agent_mail(kind: str) -> None:
        spool_id = spool.put(app.db, b"Subject: x\r\n\r\nx\r\n", Envelope(), "test", T0)
        with app.db.transaction() as session:
            conn = session.connection()
            conn.execute(
                Message.__table__.insert(),
                {
                    "ticket_id": 1,
                    "spool_id": spool_id,
                    "direction": "in",
                    "kind": kind,
                    "mail_class": "human",
                    "message_id": f"<{kind}@example.com>",
                    "body_hash": kind,
                    "in_reply_to": [],
                    "references": [],
                    "to": [],
                    "cc": [],
                    "subject": "x",
                    "text": "x",
                    "text_stripped": "x",
                    "created_at": T0,
                },
            )
            app.sla_tracker.after_agent_mail(conn, 1, spool_id, T0 + timedelta(minutes=5))

    agent_mail("internal_note")
    assert ticket(app).first_response_due_at is not None, "a note is no answer"
    agent_mail("agent_reply")
    assert ticket(app).first_response_due_at is None
    with app.db.transaction() as session:
        met = session.scalars(select(Event.data).where(Event.kind == "sla_met")).all()
    assert [m["target"] for m in met] == ["first_response"]


def test_a_stage_another_sweeper_is_recording_is_not_fired_again(
    pg_url: str, tmp_path: Path
) -> None:
    """While another transaction records a stage of a ticket (its ledger row holds a
    key-share lock on the ticket), a sweep skips that ticket (SKIP LOCKED); once it has
    committed, the ledger says the stage fired and it is not fired again."""
    from sqlalchemy import create_engine, insert

    from maild.sla.service import build_sweeper

    truncate(pg_url)
    rules = write_rules(tmp_path)
    app = App(load_settings_for(pg_url, rules), clock=FixedClock(T0))
    deliver(app, make_mail())
    other = create_engine(pg_url)
    try:
        with other.begin() as conn:
            conn.execute(
                insert(SlaStage),
                {
                    "ticket_id": 1,
                    "target": "first_response",
                    "cycle": 0,
                    "stage": "remind",
                    "occurrence": 0,
                    "outcome": "fired",
                    "due_at": REMIND,
                    "fired_at": REMIND,
                    "data": {"by": "the other sweeper"},
                },
            )
            during = build_sweeper(app).sweep(REMIND)
            assert (during.tickets, during.fired) == (0, [])
        after = build_sweeper(app).sweep(REMIND)
        assert (after.tickets, after.fired) == (1, [])
        assert mails(app) == []
        assert ticket(app).next_sla_check_at == BREACH
        assert [(s[2], s[4]) for s in ledger(app)] == [("remind", "fired")]
    finally:
        other.dispose()
        app.close()


def test_broken_policies_stop_ingest_but_never_cost_a_worker_its_mail(
    make_app: AppFactory, tmp_path: Path, db_url: str
) -> None:
    rules = write_rules(tmp_path, SLA.replace("at: 75%", "at: 175%"))
    mail = tmp_path / "mail.eml"
    mail.write_bytes(make_mail())
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n[paths]\nrules = "{rules}"\n')
    assert main(["ingest", str(mail), "--config", str(config)], io.StringIO()) == 78

    # A worker whose policies broke after the daemon started still files the mail.
    app = make_app(paths={"rules": str(rules)})
    assert deliver(app, make_mail()).state.value == "done"
    assert ticket(app).sla_applied is None
    assert app.sla.failed_reloads == 1
    write_rules(tmp_path)  # fixed: picked up without a restart
    deliver(app, make_mail(subject="Re: [#1] x", in_reply_to=None))
    assert ticket(app).sla_applied == "standard"


def test_unanswered_tickets_climb_tier_by_tier_to_the_experts(setup: tuple[App, Path]) -> None:
    app, config = setup
    deliver(app, make_mail(message_id="<t1@customer.example>"))
    tick(config, BREACH)
    assert (ticket(app).team, ticket(app).tier) == ("network", 2)

    # Tier 2 answers, the customer writes back at 15:00 local; nobody answers that.
    with app.db.transaction() as session:
        app.sla_tracker.on_agent_reply(session.connection(), 1, BREACH + timedelta(minutes=30))
    app.clock.set(datetime(2026, 3, 2, 14, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    deliver(app, make_mail(subject="Re: [#1] Printer on fire", in_reply_to="<t1@customer.example>"))
    assert ticket(app).next_response_due_at == datetime(2026, 3, 2, 16, 0, tzinfo=UTC)
    fired = tick(config, datetime(2026, 3, 2, 16, 0, tzinfo=UTC))["fired"]
    assert [(f["target"], f["cycle"], f["stage"]) for f in fired] == [
        ("next_response", 1, "breach")
    ]
    assert (ticket(app).team, ticket(app).tier) == ("experts", 3)
    to_experts = [m for to, _, m in mails(app) if to == "xena@example.com"]
    assert "now with experts" in to_experts[0]["Subject"]

    # Tier 3 is the top: a later breach notifies but moves nothing.
    with app.db.transaction() as session:
        conn = session.connection()
        app.sla_tracker.on_agent_reply(conn, 1, datetime(2026, 3, 3, 8, 0, tzinfo=UTC))
    app.clock.set(datetime(2026, 3, 3, 8, 0, tzinfo=UTC))  # type: ignore[attr-defined]
    deliver(app, make_mail(subject="Re: [#1] Printer on fire", in_reply_to="<t1@customer.example>"))
    fired = tick(config, datetime(2026, 3, 3, 11, 0, tzinfo=UTC))["fired"]
    assert [f["escalated"] for f in fired] == [
        {"from_tier": 3, "to_tier": 3, "note": "already at the top tier"}
    ]
    assert (ticket(app).team, ticket(app).tier) == ("experts", 3)
    with app.db.transaction() as session:
        moves = session.scalars(select(Event.data).where(Event.kind == "escalated")).all()
    assert [(m["from_team"], m["to_team"]) for m in moves[:2]] == [
        ("first-line", "network"),
        ("network", "experts"),
    ]


def test_a_template_that_cannot_render_costs_only_its_own_notice(
    setup: tuple[App, Path], tmp_path: Path
) -> None:
    app, config = setup
    override = tmp_path / "templates" / "agent"
    override.mkdir(parents=True)
    (override / "sla_warning.subject.j2").write_text("{{ ticket.tier + sla.remaining }}")
    (override / "sla_warning.txt.j2").write_text("x\n")
    deliver(app, make_mail())
    [fired] = tick(config, REMIND)["fired"]
    assert fired["notified"] == []
    assert "TypeError" in fired["problems"][0]
    assert ledger(app)[0][2:] == ("remind", 0, "fired")
    assert len(tick(config, BREACH)["fired"][0]["notified"]) == 4, "the next stage goes out"


def test_a_new_ticket_starts_with_the_clocks_a_refresh_would_give_it(
    setup: tuple[App, Path],
) -> None:
    """The clocks are worked out before the ticket's INSERT (SlaTracker.opening); read
    back and brought up to date as for any later change, nothing moves and no event is
    added."""
    app, _ = setup
    for n, subject in enumerate(("VPN down", "Server down, urgent")):
        deliver(app, make_mail(subject=subject, sender=f"c{n}@customer.example"))
    with app.db.transaction() as session:
        created = session.execute(select(Ticket).order_by(Ticket.id)).scalars().all()
        before = [
            (t.id, t.sla_applied, t.first_response_due_at, t.resolution_due_at, t.next_sla_check_at)
            for t in created
        ]
        events = session.scalar(select(func.count()).select_from(Event))
        started = session.scalars(select(Event.kind).where(Event.kind.like("sla_%"))).all()
    assert all(row[1] == "standard" and row[4] is not None for row in before)
    assert len(started) == len(before)  # each ticket's clocks were announced once
    with app.db.begin() as conn:
        for ticket_id, *_ in before:
            app.sla_tracker.refresh(conn, ticket_id, app.clock.now())
    with app.db.transaction() as session:
        after = [
            (t.id, t.sla_applied, t.first_response_due_at, t.resolution_due_at, t.next_sla_check_at)
            for t in session.execute(select(Ticket).order_by(Ticket.id)).scalars()
        ]
        assert session.scalar(select(func.count()).select_from(Event)) == events
    assert after == before


def test_a_reply_after_the_policies_are_gone_stops_the_tickets_clocks(
    setup: tuple[App, Path], tmp_path: Path
) -> None:
    """With no policies a reply need not look at SLA clocks, unless its ticket has some."""
    app, _ = setup
    deliver(app, make_mail(message_id="<gone1@customer.example>"))
    assert ticket(app).sla_applied == "standard"
    (tmp_path / "rules" / "sla.yaml").unlink()
    deliver(
        app, make_mail(subject="Re: [#1] Printer on fire", in_reply_to="<gone1@customer.example>")
    )
    stopped = ticket(app)
    assert (stopped.sla_applied, stopped.first_response_due_at) == (None, None)
    with app.db.transaction() as session:
        kinds = session.scalars(select(Event.kind).where(Event.kind == "sla_removed")).all()
    assert kinds == ["sla_removed"]
