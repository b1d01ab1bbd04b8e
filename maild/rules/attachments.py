"""Conditions on attachments: `attachment` (one attachment matching every part given:
name, content type, size) and `attachment_count`."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from maild.rules.conditions import compile_matchers, text_operators
from maild.rules.context import Context
from maild.rules.facts import MailFacts
from maild.rules.literals import fold
from maild.rules.matchers import Matcher, quote
from maild.rules.nodes import Atom, AtomNode, Node, seen_values
from maild.rules.registry import CONDITIONS
from maild.rules.schema import AttachmentArgs, NumberOps, SizeOps, TextOps, keys_of
from maild.rules.yamldoc import Path


@dataclass(frozen=True)
class Range:
    equals: int | None = None
    min: int | None = None
    max: int | None = None

    def holds(self, value: int) -> bool:
        return (
            (self.equals is None or value == self.equals)
            and (self.min is None or value >= self.min)
            and (self.max is None or value <= self.max)
        )

    def label(self) -> str:
        parts = []
        if self.equals is not None:
            parts.append(f"= {self.equals}")
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        return " and ".join(parts)


def _range(ops: NumberOps | SizeOps, path: Path, ctx: Context) -> Range | None:
    if ops.equals is None and ops.min is None and ops.max is None:
        ctx.error(path, "give `equals`, `min` or `max`")
        return None
    if ops.min is not None and ops.max is not None and ops.min > ops.max:
        ctx.error(path, f"min {ops.min} is greater than max {ops.max}")
        return None
    return Range(ops.equals, ops.min, ops.max)


class AttachmentAtom(Atom):
    """True if one attachment matches every part given (name, content type, size)."""

    def __init__(
        self, name: tuple[Matcher, ...], content_type: tuple[Matcher, ...], size: Range | None
    ) -> None:
        self.name = name
        self.content_type = content_type
        self.size = size

    def key(self) -> Hashable:
        return (
            "attachment",
            tuple(m.key() for m in self.name),
            tuple(m.key() for m in self.content_type),
            self.size,
        )

    def describe(self) -> str:
        parts = [f"name {m.label()}" for m in self.name]
        parts += [f"content type {m.label()}" for m in self.content_type]
        if self.size is not None:
            parts.append(f"size {self.size.label()}")
        return "attachment with " + ", ".join(parts)

    def _matches(self, filename: str, content_type: str, size: int) -> bool:
        folded_name, folded_type = fold(filename), fold(content_type)
        return (
            all(m.matches(filename, folded_name) for m in self.name)
            and all(m.matches(content_type, folded_type) for m in self.content_type)
            and (self.size is None or self.size.holds(size))
        )

    def test(self, facts: MailFacts) -> bool:
        return any(self._matches(a.filename, a.content_type, a.size) for a in facts.attachments)

    def trace(self, facts: MailFacts) -> tuple[bool, str]:
        for a in facts.attachments:
            if self._matches(a.filename, a.content_type, a.size):
                return True, f"{quote(a.filename)} ({a.content_type}, {a.size} bytes)"
        names = tuple(f"{a.filename} ({a.content_type}, {a.size} bytes)" for a in facts.attachments)
        return False, seen_values(names)


@CONDITIONS.register("attachment")
def _attachment(arg: object, path: Path, ctx: Context) -> Node | None:
    """`attachment: {name: {glob: "*.pdf"}, content_type: application/pdf, size: {max: 5MB}}`"""
    args = ctx.validate(AttachmentArgs, arg, path)
    if args is None:
        return None
    parts: dict[str, tuple[Matcher, ...]] = {}
    ok = True
    for part in ("name", "content_type"):
        value = getattr(args, part)
        if value is None:
            parts[part] = ()
            continue
        ops = ctx.validate(TextOps, text_operators(value), (*path, part))
        if ops is None or ops.exists is not None:
            if ops is not None:
                ctx.error((*path, part, "exists"), "`exists` does not apply here")
            ok = False
            continue
        found = compile_matchers(ops, (*path, part), ctx)
        ok &= found is not None
        parts[part] = tuple(found or ())
    size = None
    if args.size is not None:
        size_ops = ctx.validate(SizeOps, args.size, (*path, "size"))
        size = _range(size_ops, (*path, "size"), ctx) if size_ops is not None else None
        ok &= size is not None
    if not ok:
        return None
    if not parts["name"] and not parts["content_type"] and size is None:
        ctx.error(path, f"give at least one of: {', '.join(keys_of(AttachmentArgs))}")
        return None
    return AtomNode(ctx.atom(AttachmentAtom(parts["name"], parts["content_type"], size)))


class CountAtom(Atom):
    def __init__(self, count: Range) -> None:
        self.count = count

    def key(self) -> Hashable:
        return ("attachment_count", self.count)

    def describe(self) -> str:
        return f"attachment count {self.count.label()}"

    def test(self, facts: MailFacts) -> bool:
        return self.count.holds(len(facts.attachments))

    def trace(self, facts: MailFacts) -> tuple[bool, str]:
        return self.test(facts), str(len(facts.attachments))


@CONDITIONS.register("attachment_count")
def _attachment_count(arg: object, path: Path, ctx: Context) -> Node | None:
    """`attachment_count: 0`, or `{min: 1}`, `{max: 3}`."""
    if isinstance(arg, int) and not isinstance(arg, bool):
        arg = {"equals": arg}
    ops = ctx.validate(NumberOps, arg, path)
    count = _range(ops, path, ctx) if ops is not None else None
    return AtomNode(ctx.atom(CountAtom(count))) if count is not None else None
