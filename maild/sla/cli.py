"""`maild sla check | tick | status`: argument parsing is in maild/cli.py, the work here."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from maild.rules import RuleError
from maild.sla.clocks import occurrences
from maild.sla.notify import human
from maild.sla.policy import load_policies
from maild.sla.schema import TARGETS
from maild.sla.service import build_sweeper
from maild.sla.track import LEDGER, TICKET, clocks_of, select_tickets

if TYPE_CHECKING:
    from maild.app import App

EX_OK = 0
EX_NOINPUT = 66
EX_CONFIG = 78


def check(directory: str | Path) -> tuple[int, str]:
    """(0, a summary) or (78, every problem as file:line:column)."""
    try:
        policies = load_policies(directory)
    except RuleError as exc:
        count = len(exc.issues)
        lines = [str(issue) for issue in exc.issues]
        lines.append(f"{count} problem{'s' * (count != 1)} found; nothing was changed")
        return EX_CONFIG, "\n".join(lines)
    names = ", ".join(policies.policies) or "none"
    return EX_OK, f"{directory}: OK: {len(policies.policies)} SLA policies ({names})"


def parse_now(value: datetime | None, app: App) -> datetime:
    """`--now` as given, or the app's clock."""
    return app.clock.now() if value is None else value


def tick(app: App, now: datetime) -> dict[str, Any]:
    """One sweep at `now`; what it did."""
    result = build_sweeper(app).sweep(now)
    return {
        "now": now.isoformat(),
        "tickets": result.tickets,
        "fired": result.fired,
        "skipped": result.skipped,
        "mails": result.mails,
    }


def render_tick(report: dict[str, Any]) -> str:
    lines = [
        f"sla tick at {report['now']}: {report['tickets']} tickets due, "
        f"{len(report['fired'])} stages fired, {report['skipped']} passed over, "
        f"{report['mails']} mails queued"
    ]
    for fired in report["fired"]:
        moved = fired.get("escalated") or {}
        to = ", ".join(f"{n['role']} {n['to']}" for n in fired["notified"]) or "nobody"
        extra = f"; to {moved['to_team']} (tier {moved['to_tier']})" if moved.get("to_team") else ""
        lines.append(
            f"  #{fired['ticket']} {fired['target']} {fired['stage']}"
            f"{'#' + str(fired['occurrence'] + 1) if fired['occurrence'] else ''}: "
            f"notified {to}{extra}"
        )
    return "\n".join(lines)


def status(
    app: App, number: str | None, now: datetime, limit: int = 100
) -> list[dict[str, Any]] | None:
    """The SLA state of one ticket (None if there is no such ticket), or of the `limit`
    tickets under a policy whose next stage comes first."""
    policies = app.sla.current
    with app.db.transaction() as session:
        conn = session.connection()
        query = select_tickets()
        if number is not None:
            query = query.where(TICKET.c.number == number)
        else:
            query = (
                query.where(TICKET.c.next_sla_check_at.is_not(None))
                .order_by(TICKET.c.next_sla_check_at)
                .limit(limit)
            )
        rows = conn.execute(query).all()
        if number is not None and not rows:
            return None
        ids = [row.id for row in rows]
        ledger: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        if ids:
            for entry in conn.execute(
                select(LEDGER).where(LEDGER.c.ticket_id.in_(ids)).order_by(LEDGER.c.id)
            ):
                ledger[entry.ticket_id].append(
                    {
                        "target": entry.target,
                        "cycle": entry.cycle,
                        "stage": entry.stage,
                        "occurrence": entry.occurrence,
                        "outcome": entry.outcome,
                        "due_at": entry.due_at.isoformat(),
                        "at": entry.fired_at.isoformat(),
                    }
                )
    found = []
    for row in rows:
        clocks = clocks_of(row)
        policy = policies.policies.get(clocks.applied) if clocks.applied else None
        targets = []
        for target in TARGETS:
            due = clocks.due(target)
            total = policy.target(target, clocks.priority or row.priority) if policy else None
            if due is None or total is None or policy is None:
                continue
            reference = clocks.paused_at or now
            left = policy.calendar.between(reference, due)
            targets.append(
                {
                    "target": target,
                    "cycle": clocks.cycle(target),
                    "due_at": due.isoformat(),
                    "allowed_minutes": total.total_seconds() / 60,
                    "elapsed_minutes": (total - left).total_seconds() / 60,
                    "left": ("-" if left.total_seconds() < 0 else "") + human(left),
                }
            )
        fired = {(e["target"], e["cycle"], e["stage"], e["occurrence"]) for e in ledger[row.id]}
        upcoming = (
            [
                {
                    "target": o.target,
                    "stage": o.stage.name,
                    "occurrence": o.occurrence,
                    "at": o.at.isoformat(),
                }
                for o in sorted(occurrences(clocks, policy), key=lambda o: o.at)
                if o.key not in fired
            ]
            if policy
            else []
        )
        found.append(
            {
                "number": row.number,
                "status": row.status,
                "priority": row.priority,
                "team": row.team,
                "tier": row.tier,
                "assignee": row.assignee,
                "policy": clocks.applied,
                "paused_since": clocks.paused_at.isoformat() if clocks.paused_at else None,
                "next_check_at": row.next_sla_check_at.isoformat()
                if row.next_sla_check_at
                else None,
                "targets": targets,
                "stages": ledger[row.id],
                "upcoming": upcoming,
            }
        )
    return found


def render_status(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no tickets under an SLA policy"
    lines: list[str] = []
    for item in items:
        paused = f", paused since {item['paused_since']}" if item["paused_since"] else ""
        lines.append(
            f"#{item['number']} {item['status']} {item['priority']} policy {item['policy'] or '-'}"
            f" team {item['team'] or '-'} tier {item['tier'] or '-'}"
            f" assignee {item['assignee'] or '-'}{paused}"
        )
        for t in item["targets"]:
            lines.append(
                f"  {t['target']}: due {t['due_at']}, elapsed {t['elapsed_minutes']:.0f} of "
                f"{t['allowed_minutes']:.0f} business minutes, left {t['left']}"
            )
        for s in item["stages"]:
            lines.append(
                f"  {s['outcome']} {s['target']} {s['stage']}#{s['occurrence'] + 1} at {s['at']}"
            )
        if item["upcoming"]:
            u = item["upcoming"][0]
            lines.append(f"  next: {u['target']} {u['stage']}#{u['occurrence'] + 1} at {u['at']}")
    return "\n".join(lines)


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)
