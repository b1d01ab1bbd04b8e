"""`maild rules check` and `maild rules test`, as functions returning (exit code and) text.

The command-line parsing lives in maild/cli.py; these do the work and never touch the
database.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from maild.pipeline.classify import classify
from maild.pipeline.limits import DEFAULT_LIMITS, MailLimits
from maild.pipeline.parse import parse
from maild.rules.decision import RouteDecision
from maild.rules.engine import Explanation, RuleSet, RuleTrace
from maild.rules.errors import RuleError
from maild.rules.loader import load_rules
from maild.rules.matchers import quote
from maild.rules.nodes import ConditionTrace
from maild.types import Envelope

EX_OK = 0
EX_CONFIG = 78  # sysexits, as maild's other commands use for operator-file errors


def check(directory: str | Path) -> tuple[int, str]:
    """Validate a rules directory: (0, a summary) or (78, every problem as file:line:col)."""
    try:
        rules = load_rules(directory)
    except RuleError as exc:
        count = len(exc.issues)
        lines = [str(issue) for issue in exc.issues]
        lines.append(f"{count} problem{'s' * (count != 1)} found; nothing was changed")
        return EX_CONFIG, "\n".join(lines)
    teams = len(rules.directory.teams)
    agents = len(rules.directory.agents)
    summary = (
        f"{directory}: OK: {len(rules.rules)} rules in {len(rules.files)} files, "
        f"{teams} teams, {agents} agents"
    )
    return EX_OK, summary


def test(
    raw_mail: bytes,
    rules_dir: str | Path,
    as_reply: bool = False,
    as_json: bool = False,
    *,
    envelope: Envelope | None = None,
    came_in_on: str | None = None,
    known_customer: bool = False,
    limits: MailLimits = DEFAULT_LIMITS,
    received_at: datetime | None = None,
) -> str:
    """Route one raw mail with the rules of `rules_dir`, without a database, and say why.

    Shows every rule with each condition matched or not and the value seen, the actions
    applied, and the resulting ticket fields. `as_reply` evaluates it as a follow-up on
    an existing ticket; `received_at` is when it arrived, for `business_hours` (default:
    now). Raises RuleError if the rules are invalid (or, when a rule asks for business
    hours, the calendars of sla.yaml), and Quarantine if the bytes are not a mail or a
    rule's regex runs out of time.
    """
    rules = load_rules(rules_dir)
    calendars = None
    if rules.asks("business_hours"):
        # Here, not at the top: the SLA package imports the rules package.
        from maild.sla.policy import load_policies

        calendars = load_policies(rules_dir).calendars
    mail = parse(raw_mail, limits)
    envelope = envelope or Envelope()
    facts = rules.facts(
        mail,
        envelope,
        mail_class=classify(mail, envelope),
        is_reply=as_reply,
        came_in_on=came_in_on,
        known_customer=known_customer,
        received_at=received_at or datetime.now(UTC),
        calendars=calendars,
    )
    explanation = rules.explain(facts)
    summary = MailSummary(
        message_id=mail.message_id,
        sender=next(iter(facts.values("from")), None),
        recipients=facts.values("recipient"),
        subject=mail.subject,
        mail_class=facts.mail_class.value,
        sender_is=facts.sender_is,
        attachments=len(mail.attachments),
    )
    if as_json:
        return json.dumps(_as_json(summary, explanation, rules), ensure_ascii=False, indent=2)
    return "\n".join(_as_text(summary, explanation, rules))


@dataclass(frozen=True)
class MailSummary:
    message_id: str
    sender: str | None
    recipients: tuple[str, ...]
    subject: str
    mail_class: str
    sender_is: str
    attachments: int


def ticket_fields(decision: RouteDecision, rules: RuleSet, phase: str) -> dict[str, object]:
    """The ticket as the rules leave it; defaults where no rule said anything."""
    fields: dict[str, object] = {
        "outcome": "ticket"
        if decision.disposition is None
        else f"{decision.disposition.action}: {decision.disposition.reason}",
        "queue": decision.queue,
        "team": decision.team,
        "tier": decision.tier,
        "priority": decision.priority or ("normal" if phase == "new" else None),
        "type": decision.ticket_type,
        "status": decision.status.value if decision.status else ("new" if phase == "new" else None),
        "sla": decision.sla,
        "tags": list(decision.tags),
        "tags_removed": list(decision.tags_removed),
        "assign": _assignment(decision),
        "auto_reply": "default"
        if decision.auto_reply is None
        else (decision.auto_reply.template or "none"),
        "notify": [
            f"{', '.join([*n.agents, *(f'team {t}' for t in n.teams), *n.addresses])}"
            f" with {n.template}"
            for n in decision.notify
        ],
    }
    return fields


def _assignment(decision: RouteDecision) -> str | None:
    request = decision.assign
    if request is None:
        return None
    if request.agent is not None:
        return request.agent
    needs = "".join(
        f", {k} {v}" for k, v in (("skill", request.skill), ("language", request.language)) if v
    )
    return f"a member of team {request.team} by {request.by}{needs} (chosen at delivery)"


def _as_json(summary: MailSummary, explanation: Explanation, rules: RuleSet) -> dict[str, object]:
    return {
        "mail": asdict(summary),
        "phase": explanation.phase,
        "rules": [_rule_json(trace) for trace in explanation.rules],
        "decision": explanation.decision.as_dict(),
        "ticket": ticket_fields(explanation.decision, rules, explanation.phase),
    }


def _rule_json(trace: RuleTrace) -> dict[str, object]:
    data = asdict(trace)
    data["condition"] = _condition_json(trace.condition) if trace.condition else None
    return data


def _condition_json(trace: ConditionTrace) -> dict[str, object]:
    data: dict[str, object] = {"matched": trace.matched, "condition": trace.label}
    if trace.kind == "condition":
        data["seen"] = trace.seen
    else:
        data["kind"] = trace.kind
        data["conditions"] = [_condition_json(child) for child in trace.children]
    return data


_STATUS = {
    "fired": "FIRED",
    "not matched": "not matched",
    "not reached": "not reached: an earlier rule stopped",
    "skipped": "skipped",
}


def _as_text(summary: MailSummary, explanation: Explanation, rules: RuleSet) -> list[str]:
    phase = explanation.phase
    lines = [
        f"mail {summary.message_id}",
        f"  from:        {summary.sender or '(none)'}",
        f"  recipients:  {', '.join(summary.recipients) or '(none)'}",
        f"  subject:     {quote(summary.subject, 100)}",
        f"  class:       {summary.mail_class}, sender is {summary.sender_is},"
        f" {summary.attachments} attachment{'s' * (summary.attachments != 1)}",
        f"  evaluated as {'a follow-up on a ticket' if phase == 'reply' else 'a new ticket'}"
        f" (rules with on: [{phase}])",
        "",
    ]
    if not explanation.rules:
        lines.append("no rules")
    for number, trace in enumerate(explanation.rules, 1):
        status = _STATUS[trace.status]
        if trace.status == "skipped":
            status += f": runs on {', '.join(trace.on)}"
        stop = ", stop" if trace.stop and trace.status == "fired" else ""
        lines.append(f"{number}. {trace.name}  ({trace.file}:{trace.line})  {status}{stop}")
        if trace.condition is None:
            lines.append("   ✓ (no condition: every mail)")
        else:
            lines += _condition_lines(trace.condition, 1)
        if trace.status == "fired":
            lines += [f"   → {action}" for action in trace.actions]
    lines += ["", "ticket:" if phase == "new" else "ticket (what the follow-up changes):"]
    unset = "-" if phase == "new" else "unchanged"
    for name, value in ticket_fields(explanation.decision, rules, phase).items():
        lines.append(f"  {name + ':':<14}{_show(value, unset)}")
    lines += ["", f"fired: {', '.join(f.name for f in explanation.decision.fired) or 'none'}"]
    return lines


def _condition_lines(trace: ConditionTrace, depth: int) -> list[str]:
    mark = "✓" if trace.matched else "✗"
    indent = "   " * depth
    if trace.kind == "condition":
        return [f"{indent}{mark} {trace.label}  (seen: {trace.seen})"]
    lines = [f"{indent}{mark} {trace.label}"]
    for child in trace.children:
        lines += _condition_lines(child, depth + 1)
    return lines


def _show(value: object, unset: str) -> str:
    if value is None or value == []:
        return unset
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return str(value)
