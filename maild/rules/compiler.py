"""One routing file to compiled rules, reporting every problem with its position."""

from __future__ import annotations

from dataclasses import dataclass

from maild.rules import actions as _actions  # registers the built-in actions
from maild.rules import attachments as _attachments  # registers attachment conditions
from maild.rules.conditions import compile_condition
from maild.rules.context import Context
from maild.rules.decision import Phase
from maild.rules.nodes import Node
from maild.rules.registry import ACTIONS, Action
from maild.rules.schema import RuleEntry, keys_of, suggest
from maild.rules.yamldoc import Path

assert _actions and _attachments  # imported for their registrations


@dataclass(frozen=True)
class CompiledRule:
    name: str
    file: str
    line: int
    when: Node | None  # None: every mail
    actions: tuple[Action, ...]
    stop: bool
    on: frozenset[Phase]
    described: tuple[str, ...]  # the actions as explanations show them


def compile_routing(ctx: Context, first_seen: dict[str, str]) -> list[CompiledRule]:
    """The rules of `ctx.doc`. `first_seen` maps rule names to where they were first
    defined (across files); a name seen again is an error."""
    doc = ctx.doc
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        ctx.error((), "expected a mapping with a `rules:` list")
        return []
    for key in data:
        if key != "rules":
            message = f"unknown key '{key}'{suggest(key, ('rules',))}"
            if key in ("teams", "agents"):
                message = f"`{key}` belong in teams.yaml"
            ctx.error((key,), message, key=True)
    entries = data.get("rules")
    if entries is None:
        return []
    if not isinstance(entries, list):
        ctx.error(("rules",), "`rules` must be a list")
        return []
    compiled = []
    for i, raw in enumerate(entries):
        rule = _compile_rule(raw, i, ctx, first_seen)
        if rule is not None:
            compiled.append(rule)
    return compiled


def _compile_rule(
    raw: object, index: int, ctx: Context, first_seen: dict[str, str]
) -> CompiledRule | None:
    path = ("rules", index)
    if not isinstance(raw, dict):
        ctx.error(path, "a rule is a mapping with `name`, `when`, `then` (and `stop`, `on`)")
        return None
    # Unknown keys are reported here rather than by the model, so that the rest of the
    # rule is still checked: one typo should not hide the rule's other problems.
    fields = keys_of(RuleEntry)
    ok = True
    for key in raw:
        if key not in fields:
            ctx.error((*path, key), f"unknown key '{key}'{suggest(key, fields)}", key=True)
            ok = False
    known = {key: value for key, value in raw.items() if key in fields}
    entry = ctx.validate(RuleEntry, known, path)

    when = None
    if known.get("when") is not None:
        when = compile_condition(known["when"], (*path, "when"), ctx)
        ok &= when is not None
    then = known.get("then")
    actions = _compile_then(then, (*path, "then"), ctx) if isinstance(then, dict) else []
    ok &= actions is not None
    if entry is None or actions is None:
        _remember_name(known.get("name"), path, ctx, first_seen)
        return None
    ok &= _remember_name(entry.name, path, ctx, first_seen)
    if not entry.then and not entry.stop:
        ctx.error(path, f"rule '{entry.name}' does nothing: give it `then` actions or `stop: true`")
        ok = False
    if not ok:
        return None
    return CompiledRule(
        name=entry.name,
        file=ctx.doc.file,
        line=ctx.doc.mark(path).line,
        when=when,
        actions=tuple(actions),
        stop=entry.stop,
        on=frozenset(entry.on),
        described=tuple(action.describe() for action in actions),
    )


def _remember_name(name: object, path: Path, ctx: Context, first_seen: dict[str, str]) -> bool:
    """Record where a rule name is defined; False (reported) if it already was."""
    if not isinstance(name, str):
        return True
    name = name.strip()
    if name in first_seen:
        ctx.error((*path, "name"), f"rule '{name}' is already defined at {first_seen[name]}")
        return False
    first_seen[name] = f"{ctx.doc.file}:{ctx.doc.mark(path).line}"
    return True


def _compile_then(then: dict[str, object], path: Path, ctx: Context) -> list[Action] | None:
    """The actions in the order written; None after reporting problems (all of them)."""
    actions: list[Action] = []
    ok = True
    for key, arg in then.items():
        at = (*path, key)
        if key == "stop":
            ctx.error(at, "`stop` is a key of the rule: write `stop: true` beside `then`", key=True)
            ok = False
            continue
        compile_action = ACTIONS.get(key)
        if compile_action is None:
            ctx.error(at, ACTIONS.unknown(key), key=True)
            ok = False
            continue
        action = compile_action(arg, at, ctx)
        if action is None:
            ok = False
        else:
            actions.append(action)
    return actions if ok else None
