"""The built-in actions of a rule's `then`, registered by name.

Actions apply in the order written. A later value overrides an earlier one (also across
rules); tags and notifications accumulate.
"""

from __future__ import annotations

from dataclasses import dataclass

from maild.rules.context import Context
from maild.rules.decision import (
    PRIORITIES,
    TICKET_TYPES,
    AssignRequest,
    AutoReply,
    Disposition,
    Draft,
    Notify,
)
from maild.rules.registry import ACTIONS, Action
from maild.rules.schema import AssignArgs, AutoReplyArgs, NotifyArgs, TagArgs, suggest
from maild.rules.yamldoc import Path
from maild.types import TicketStatus


@dataclass(frozen=True)
class SetField:
    """Sets one ticket field; `shown_as` is the action's name in the files."""

    attribute: str
    shown_as: str
    value: object

    def apply(self, draft: Draft) -> None:
        setattr(draft, self.attribute, self.value)

    def describe(self) -> str:
        return f"{self.shown_as} = {self.value}"


def _text(arg: object, path: Path, ctx: Context, what: str, noun: str = "a name") -> str | None:
    if isinstance(arg, int | float) and not isinstance(arg, bool):
        arg = str(arg)
    if not isinstance(arg, str) or not arg.strip():
        ctx.error(path, f"`{what}` takes {noun}")
        return None
    return arg.strip()


def _choice(
    arg: object, choices: tuple[str, ...], path: Path, ctx: Context, what: str
) -> str | None:
    if isinstance(arg, str) and arg in choices:
        return arg
    ctx.error(path, f"unknown {what} '{arg}'{suggest(str(arg), choices)}")
    return None


@ACTIONS.register("queue")
def _queue(arg: object, path: Path, ctx: Context) -> Action | None:
    name = _text(arg, path, ctx, "queue")
    return SetField("queue", "queue", name) if name is not None else None


@ACTIONS.register("team")
def _team(arg: object, path: Path, ctx: Context) -> Action | None:
    name = _text(arg, path, ctx, "team")
    if name is None or not ctx.check_team(name, path):
        return None
    return SetField("team", "team", name)


@ACTIONS.register("tier")
def _tier(arg: object, path: Path, ctx: Context) -> Action | None:
    if arg not in (1, 2, 3) or isinstance(arg, bool):
        ctx.error(path, "`tier` takes 1, 2 or 3")
        return None
    return SetField("tier", "tier", arg)


@ACTIONS.register("priority")
def _priority(arg: object, path: Path, ctx: Context) -> Action | None:
    value = _choice(arg, PRIORITIES, path, ctx, "priority")
    return SetField("priority", "priority", value) if value is not None else None


@ACTIONS.register("type")
def _type(arg: object, path: Path, ctx: Context) -> Action | None:
    value = _choice(arg, TICKET_TYPES, path, ctx, "ticket type")
    return SetField("ticket_type", "type", value) if value is not None else None


@ACTIONS.register("status")
def _status(arg: object, path: Path, ctx: Context) -> Action | None:
    value = _choice(arg, tuple(s.value for s in TicketStatus), path, ctx, "status")
    return SetField("status", "status", TicketStatus(value)) if value is not None else None


@ACTIONS.register("sla")
def _sla(arg: object, path: Path, ctx: Context) -> Action | None:
    name = _text(arg, path, ctx, "sla")
    if name is None or not ctx.check_sla(name, path):
        return None
    return SetField("sla", "sla", name)


@dataclass(frozen=True)
class Tags:
    add: tuple[str, ...]
    remove: tuple[str, ...]

    def apply(self, draft: Draft) -> None:
        for tag in self.add:
            draft.add_tag(tag)
        for tag in self.remove:
            draft.remove_tag(tag)

    def describe(self) -> str:
        parts = [f"tags += {', '.join(self.add)}"] if self.add else []
        parts += [f"tags -= {', '.join(self.remove)}"] if self.remove else []
        return "; ".join(parts)


@ACTIONS.register("tags")
def _tags(arg: object, path: Path, ctx: Context) -> Action | None:
    """`tags: [billing, vip]` adds; `tags: {add: [...], remove: [...]}`."""
    if not isinstance(arg, dict):
        arg = {"add": arg}
    tags = ctx.validate(TagArgs, arg, path)
    if tags is None:
        return None
    if not tags.add and not tags.remove:
        ctx.error(path, "`tags` needs a tag to add or remove")
        return None
    return Tags(tuple(tags.add), tuple(tags.remove))


@dataclass(frozen=True)
class Assign:
    request: AssignRequest

    def apply(self, draft: Draft) -> None:
        draft.assign = self.request
        if self.request.team is not None:
            draft.team = self.request.team  # assigning within a team gives it the ticket

    def describe(self) -> str:
        r = self.request
        if r.agent is not None:
            return f"assign = {r.agent}"
        needs = [f"skill {r.skill}"] * (r.skill is not None)
        needs += [f"language {r.language}"] * (r.language is not None)
        extra = f" with {', '.join(needs)}" if needs else ""
        return f"assign = team {r.team} by {r.by}{extra}"


@ACTIONS.register("assign")
def _assign(arg: object, path: Path, ctx: Context) -> Action | None:
    """`assign: agent@example.com`, or `{team: network, by: least_loaded, skill: vpn}`."""
    if isinstance(arg, str):
        arg = {"agent": arg}
    args = ctx.validate(AssignArgs, arg, path)
    if args is None:
        return None
    if (args.agent is None) == (args.team is None):
        ctx.error(path, "`assign` takes either an `agent` or a `team`")
        return None
    if args.agent is not None:
        extra = [k for k in ("by", "skill", "language") if getattr(args, k) is not None]
        if extra:
            ctx.error((*path, extra[0]), f"`{extra[0]}` applies to assigning within a team")
            return None
        if not ctx.check_agent(args.agent, (*path, "agent"), assignable=True):
            return None
        return Assign(AssignRequest(agent=args.agent))
    assert args.team is not None
    if not ctx.check_team(args.team, (*path, "team")):
        return None
    if ctx.directory is not None and not ctx.directory.members(
        args.team, skill=args.skill, language=args.language
    ):
        wanted = "".join(
            f" with {k} '{v}'" for k, v in (("skill", args.skill), ("language", args.language)) if v
        )
        ctx.error(path, f"team '{args.team}' has no active member{wanted}")
        return None
    return Assign(
        AssignRequest(
            team=args.team,
            by=args.by or "round_robin",
            skill=args.skill,
            language=args.language,
        )
    )


@dataclass(frozen=True)
class SetAutoReply:
    choice: AutoReply

    def apply(self, draft: Draft) -> None:
        draft.auto_reply = self.choice

    def describe(self) -> str:
        language = f" ({self.choice.language})" if self.choice.language else ""
        return f"auto_reply = {self.choice.template or 'none'}{language}"


@ACTIONS.register("auto_reply")
def _auto_reply(arg: object, path: Path, ctx: Context) -> Action | None:
    """`auto_reply: requester/ticket_created`, `auto_reply: {template: ..., language: hu}`,
    or `auto_reply: none` for no auto-reply."""
    if arg is None or arg is False or arg == "none":
        return SetAutoReply(AutoReply(None))
    if isinstance(arg, dict):
        args = ctx.validate(AutoReplyArgs, arg, path)
        if args is None or not ctx.check_template(args.template, (*path, "template")):
            return None
        return SetAutoReply(AutoReply(args.template, args.language))
    name = _text(arg, path, ctx, "auto_reply")
    if name is None or not ctx.check_template(name, path):
        return None
    return SetAutoReply(AutoReply(name))


@dataclass(frozen=True)
class AddNotify:
    notify: Notify

    def apply(self, draft: Draft) -> None:
        draft.notify.append(self.notify)

    def describe(self) -> str:
        n = self.notify
        whom = ", ".join([*n.agents, *(f"team {t}" for t in n.teams), *n.addresses])
        return f"notify {whom} with {n.template}"


@ACTIONS.register("notify")
def _notify(arg: object, path: Path, ctx: Context) -> Action | None:
    """`notify: {teams: [network], agents: [...], addresses: [...], template: agent/vip}`"""
    args = ctx.validate(NotifyArgs, arg, path)
    if args is None:
        return None
    ok = True
    if not (args.agents or args.teams or args.addresses):
        ctx.error(path, "`notify` needs `agents`, `teams` or `addresses`")
        ok = False
    for i, agent in enumerate(args.agents):
        ok &= ctx.check_agent(agent, (*path, "agents", i))
    for i, team in enumerate(args.teams):
        ok &= ctx.check_team(team, (*path, "teams", i))
    ok &= ctx.check_template(args.template, (*path, "template"))
    if not ok:
        return None
    return AddNotify(
        Notify(tuple(args.agents), tuple(args.teams), tuple(args.addresses), args.template)
    )


@dataclass(frozen=True)
class SetDisposition:
    disposition: Disposition

    def apply(self, draft: Draft) -> None:
        draft.disposition = self.disposition

    def describe(self) -> str:
        return f"{self.disposition.action}: {self.disposition.reason}"


def _disposition(action: str) -> None:
    def compile_disposition(arg: object, path: Path, ctx: Context) -> Action | None:
        reason = _text(arg, path, ctx, action, "a reason")
        if reason is None:
            return None
        return SetDisposition(
            Disposition("quarantine" if action == "quarantine" else "drop", reason)
        )

    ACTIONS.add(action, compile_disposition)


# `quarantine: reason` keeps the mail for a person to look at; `drop: reason` keeps it in
# the spool as ignored. Neither makes a ticket.
_disposition("quarantine")
_disposition("drop")
