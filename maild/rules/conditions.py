"""The condition grammar (all / any / not, a mapping is all of its keys) and the built-in
conditions, registered by name.

Text conditions take a value (equals), a list (in), or a mapping of operators that must
all hold: equals, in, contains, starts_with, ends_with, glob, regex, exists. A field with
several values (recipients, a repeated header) matches if any value does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import regex

from maild.rules.context import Context
from maild.rules.facts import SENDER_KINDS
from maild.rules.matchers import Contains, EndsWith, Equals, Glob, Matcher, Regex, StartsWith
from maild.rules.nodes import AllNode, AnyNode, AtomNode, ExistsAtom, FieldAtom, Node, NotNode
from maild.rules.registry import CONDITIONS
from maild.rules.schema import HeaderOps, TextOps, suggest
from maild.rules.yamldoc import Path
from maild.types import MailClass

_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")
_DOMAIN = re.compile(r"[^@\s]+")
_TEXT_OPS = ("equals", "in", "contains", "starts_with", "ends_with", "glob", "regex")


def compile_condition(value: object, path: Path, ctx: Context) -> Node | None:
    """A `when` value to a node; None after reporting problems (all of them)."""
    if isinstance(value, list):
        return _combine("all", value, path, ctx)
    if not isinstance(value, dict) or not value:
        ctx.error(path, "a condition is a mapping, like `subject: {contains: invoice}`")
        return None
    nodes: list[Node | None] = []
    for key, arg in value.items():
        at = (*path, key)
        if key in ("all", "any"):
            if not isinstance(arg, list) or not arg:
                ctx.error(at, f"`{key}` takes a non-empty list of conditions")
                nodes.append(None)
            else:
                nodes.append(_combine(key, arg, at, ctx))
        elif key == "not":
            inner = compile_condition(arg, at, ctx)
            nodes.append(NotNode(inner) if inner is not None else None)
        else:
            compiler = CONDITIONS.get(key)
            if compiler is None:
                ctx.error(at, CONDITIONS.unknown(key), key=True)
                nodes.append(None)
            else:
                nodes.append(compiler(arg, at, ctx))
    return _all(nodes)


def _combine(kind: str, items: list[object], path: Path, ctx: Context) -> Node | None:
    children = [compile_condition(item, (*path, i), ctx) for i, item in enumerate(items)]
    if not children:
        ctx.error(path, "an empty list of conditions")
        return None
    if any(child is None for child in children):
        return None
    known = tuple(c for c in children if c is not None)
    if len(known) == 1:
        return known[0]
    return AllNode(known) if kind == "all" else AnyNode(known)


def _all(nodes: list[Node | None]) -> Node | None:
    if any(node is None for node in nodes):
        return None
    known = tuple(n for n in nodes if n is not None)
    return known[0] if len(known) == 1 else AllNode(known)


# ---------------------------------------------------------------- text operators


def text_operators(arg: object) -> object:
    """Shorthand: a value means `equals`, a list means `in`."""
    if isinstance(arg, list):
        return {"in": arg}
    if isinstance(arg, str | int | float) and not isinstance(arg, bool):
        return {"equals": arg}
    return arg


def compile_matchers(
    ops: TextOps, path: Path, ctx: Context, check: _ValueCheck | None = None
) -> list[Matcher] | None:
    """Compile the operators that are set; None after reporting a problem."""
    found: list[Matcher] = []
    ok = True
    if ops.equals is not None:
        ok &= check is None or check(ops.equals, (*path, "equals"), ctx)
        found.append(Equals("equals", (ops.equals,)))
    if ops.in_ is not None:
        for i, value in enumerate(ops.in_):
            ok &= check is None or check(value, (*path, "in", i), ctx)
        found.append(Equals("in", tuple(ops.in_)))
    if ops.contains is not None:
        found.append(Contains(tuple(ops.contains)))
    if ops.starts_with is not None:
        found.append(StartsWith(tuple(ops.starts_with)))
    if ops.ends_with is not None:
        found.append(EndsWith(tuple(ops.ends_with)))
    if ops.glob is not None:
        found.append(Glob(tuple(ops.glob)))
    if ops.regex is not None:
        patterns = []
        for i, text in enumerate(ops.regex):
            try:
                patterns.append(re.compile(text))
                regex.compile(text)  # the search itself runs on `regex`: see matchers.Regex
            except (re.error, regex.error) as exc:
                position = getattr(exc, "pos", None)
                where = f" at position {position}" if position is not None else ""
                message = getattr(exc, "msg", str(exc))
                ctx.error((*path, "regex", i), f"invalid regex '{text}': {message}{where}")
                ok = False
        found.append(Regex(tuple(patterns)))
    return found if ok else None


class _ValueCheck:
    """Checks an `equals` / `in` value of a field (an address must look like one)."""

    def __init__(self, pattern: re.Pattern[str], expected: str) -> None:
        self.pattern = pattern
        self.expected = expected

    def __call__(self, value: str, path: Path, ctx: Context) -> bool:
        if self.pattern.fullmatch(value.strip()):
            return True
        ctx.error(path, f"'{value}' is not {self.expected}")
        return False


_IS_ADDRESS = _ValueCheck(_ADDRESS, "a mail address (use `ends_with` or `glob` for parts)")
_IS_DOMAIN = _ValueCheck(_DOMAIN, "a domain (write it without '@')")


@dataclass(frozen=True)
class TextField:
    """A condition over one text field of the mail (see facts.MailFacts)."""

    field: str
    shown_as: str
    check: _ValueCheck | None = None

    def __call__(self, arg: object, path: Path, ctx: Context) -> Node | None:
        ops = ctx.validate(TextOps, text_operators(arg), path)
        if ops is None:
            return None
        return _text_condition(self.field, self.shown_as, ops, path, ctx, self.check)


def _text_condition(
    field: str,
    shown_as: str,
    ops: TextOps,
    path: Path,
    ctx: Context,
    check: _ValueCheck | None,
) -> Node | None:
    matchers = compile_matchers(ops, path, ctx, check)
    if matchers is None:
        return None
    nodes: list[Node] = [AtomNode(ctx.atom(FieldAtom(field, shown_as, m))) for m in matchers]
    if ops.exists is not None:
        nodes.append(AtomNode(ctx.atom(ExistsAtom(field, shown_as, ops.exists))))
    if not nodes:
        ctx.error(path, f"no operator given (one of: {', '.join((*_TEXT_OPS, 'exists'))})")
        return None
    return nodes[0] if len(nodes) == 1 else AllNode(tuple(nodes))


for _name, _shown, _check in (
    ("from", "from", _IS_ADDRESS),
    ("from_name", "from name", None),
    ("from_domain", "from domain", _IS_DOMAIN),
    ("to", "to", _IS_ADDRESS),
    ("cc", "cc", _IS_ADDRESS),
    ("delivered_to", "delivered to", _IS_ADDRESS),
    ("recipient", "recipient", _IS_ADDRESS),
    ("subject", "subject", None),
    ("body", "body", None),
    ("body_full", "full body", None),
):
    CONDITIONS.add(_name, TextField(_name, _shown, _check))


@CONDITIONS.register("header")
def _header(arg: object, path: Path, ctx: Context) -> Node | None:
    """`header: {name: X-Spam-Flag, equals: "YES"}`: any header, by name."""
    ops = ctx.validate(HeaderOps, arg, path)
    if ops is None:
        return None
    return _text_condition(f"header:{ops.name.lower()}", f"header {ops.name}", ops, path, ctx, None)


# ---------------------------------------------------------------- fields with a fixed set of values


@dataclass(frozen=True)
class ChoiceField:
    """A field whose values are a fixed set (`class: bounce`, `sender_is: [agent]`)."""

    field: str
    choices: tuple[str, ...]

    def __call__(self, arg: object, path: Path, ctx: Context) -> Node | None:
        values = arg if isinstance(arg, list) else [arg]
        if not values:
            ctx.error(path, f"`{self.field}` takes one of: {', '.join(self.choices)}")
            return None
        ok = True
        for i, value in enumerate(values):
            if value not in self.choices:
                at = (*path, i) if isinstance(arg, list) else path
                ctx.error(at, f"unknown {self.field} '{value}'{suggest(str(value), self.choices)}")
                ok = False
        if not ok:
            return None
        texts = tuple(str(v) for v in values)
        matcher = Equals("equals" if len(texts) == 1 else "in", texts)
        return AtomNode(ctx.atom(FieldAtom(self.field, self.field, matcher)))


CONDITIONS.add("class", ChoiceField("class", tuple(c.value for c in MailClass)))
CONDITIONS.add("sender_is", ChoiceField("sender_is", SENDER_KINDS))


@CONDITIONS.register("business_hours")
def _business_hours(arg: object, path: Path, ctx: Context) -> Node | None:
    """`business_hours: budapest` (or a list: any of them): the mail arrived while that
    calendar of rules/sla.yaml was open; `not: {business_hours: budapest}` for closed."""
    names = arg if isinstance(arg, list) else [arg]
    if not names or not all(isinstance(name, str) and name for name in names):
        ctx.error(path, "`business_hours` takes a calendar name of rules/sla.yaml, or a list")
        return None
    ok = True
    for i, name in enumerate(names):
        ok &= ctx.check_calendar(name, (*path, i) if isinstance(arg, list) else path)
    if not ok:
        return None
    matcher = Equals("equals" if len(names) == 1 else "in", tuple(str(n) for n in names))
    return AtomNode(ctx.atom(FieldAtom("business_hours", "business hours", matcher)))


@CONDITIONS.register("is_reply")
def _is_reply(arg: object, path: Path, ctx: Context) -> Node | None:
    """`is_reply: true`: a follow-up on an existing ticket (see the rule's `on`)."""
    if not isinstance(arg, bool):
        ctx.error(path, "`is_reply` takes true or false")
        return None
    matcher = Equals("equals", ("true" if arg else "false",))
    return AtomNode(ctx.atom(FieldAtom("is_reply", "is_reply", matcher)))
