"""Compiled conditions: atoms (one test on one field, shared by every rule that states
it) combined by all / any / not.

Each atom has a mode that tells the engine how a mail's answer is found:

* INDEXED: equality with one of a few values; answered by a dict lookup per mail value,
  whatever the number of rules;
* SCANNED: `contains`; answered exactly by the field's one literal scan;
* FILTERED: regex, glob, starts_with, ends_with with a known literal; run only if the
  field's scan saw that literal;
* TESTED: anything else; run when a rule needs it, at most once per mail.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

from maild.rules.facts import MailFacts
from maild.rules.matchers import Matcher, quote


class Mode(enum.Enum):
    INDEXED = "indexed"
    SCANNED = "scanned"
    FILTERED = "filtered"
    TESTED = "tested"


@dataclass(frozen=True, slots=True)
class ConditionTrace:
    """How one condition came out on one mail; `seen` is the mail's value (leaves)."""

    kind: str  # "all", "any", "not" or "condition"
    label: str
    matched: bool
    seen: str = ""
    children: tuple[ConditionTrace, ...] = ()


class Atom(abc.ABC):
    """A leaf condition. Atoms with the same key are one atom, tested once per mail."""

    id: int = -1  # set by the atom table
    mode: Mode = Mode.TESTED
    field: str = ""  # the MailFacts field it reads; "" if it reads something else
    _label: str | None = None

    @abc.abstractmethod
    def key(self) -> Hashable:
        """Equal for atoms that test the same thing."""

    @abc.abstractmethod
    def describe(self) -> str: ...

    @abc.abstractmethod
    def test(self, facts: MailFacts) -> bool: ...

    @abc.abstractmethod
    def trace(self, facts: MailFacts) -> tuple[bool, str]:
        """The answer and what was seen on the mail, for explanations."""

    def label(self) -> str:
        """How the condition reads in explanations (made once: it is shown often)."""
        if self._label is None:
            self._label = self.describe()
        return self._label

    def index_values(self) -> frozenset[str]:
        """INDEXED atoms: the folded values that make it true."""
        raise NotImplementedError

    def needles(self) -> frozenset[str]:
        """SCANNED atoms: exact needles; FILTERED atoms: needed literals."""
        raise NotImplementedError


def seen_values(values: tuple[str, ...]) -> str:
    if not values:
        return "(none)"
    shown = ", ".join(quote(v) for v in values[:5])
    return shown + (f" and {len(values) - 5} more" if len(values) > 5 else "")


class FieldAtom(Atom):
    """True if any value of the field matches the operator."""

    def __init__(self, field: str, shown_as: str, matcher: Matcher) -> None:
        self.field = field
        self.shown_as = shown_as
        self.matcher = matcher
        if matcher.equal_values() is not None:
            self.mode = Mode.INDEXED
        elif matcher.exact_needles() is not None:
            self.mode = Mode.SCANNED
        elif matcher.needed_literals() is not None:
            self.mode = Mode.FILTERED

    def key(self) -> Hashable:
        return (self.field, self.matcher.key())

    def describe(self) -> str:
        return f"{self.shown_as} {self.matcher.label()}"

    def index_values(self) -> frozenset[str]:
        values = self.matcher.equal_values()
        assert values is not None
        return values

    def needles(self) -> frozenset[str]:
        found = self.matcher.exact_needles() or self.matcher.needed_literals()
        assert found is not None
        return found

    def test(self, facts: MailFacts) -> bool:
        matches = self.matcher.matches
        return any(
            matches(raw, folded)
            for raw, folded in zip(facts.values(self.field), facts.folded(self.field), strict=True)
        )

    def trace(self, facts: MailFacts) -> tuple[bool, str]:
        raw_values = facts.values(self.field)
        for raw, folded in zip(raw_values, facts.folded(self.field), strict=True):
            hit = self.matcher.hit(raw, folded)
            if hit is not None:
                if hit == raw:
                    return True, quote(raw)
                return True, f"{quote(hit)} in {quote(_around(hit, raw, folded))}"
        return False, seen_values(raw_values)


def _around(hit: str, raw: str, folded: str, context: int = 25) -> str:
    """The part of a long value around what matched, so the match shows."""
    if len(raw) <= 60:
        return raw
    text, at = raw, raw.find(hit)
    if at < 0:
        # Folded positions are the raw ones unless folding changed a length (ß -> ss);
        # then show the folded text rather than a misplaced window.
        text = raw if len(raw) == len(folded) else folded
        at = folded.find(hit)
    start = max(0, at - context)
    end = at + len(hit) + context
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


class ExistsAtom(Atom):
    def __init__(self, field: str, shown_as: str, expected: bool) -> None:
        self.field = field
        self.shown_as = shown_as
        self.expected = expected

    def key(self) -> Hashable:
        return (self.field, "exists", self.expected)

    def describe(self) -> str:
        return f"{self.shown_as} {'exists' if self.expected else 'does not exist'}"

    def test(self, facts: MailFacts) -> bool:
        return bool(facts.values(self.field)) == self.expected

    def trace(self, facts: MailFacts) -> tuple[bool, str]:
        return self.test(facts), seen_values(facts.values(self.field))


class Trigger:
    """Atoms of which one must hold for a condition to hold; `rank` 0 is most selective."""

    __slots__ = ("atoms", "rank")

    def __init__(self, rank: int, atoms: frozenset[int]) -> None:
        self.rank = rank
        self.atoms = atoms


_RANK = {Mode.INDEXED: 0, Mode.SCANNED: 1, Mode.FILTERED: 2}


class Evaluation:
    """One mail's evaluation: raised atoms from the lookups and scans, memoised tests."""

    __slots__ = ("facts", "memo", "raised")

    def __init__(self, facts: MailFacts, raised: set[int]) -> None:
        self.facts = facts
        self.raised = raised
        self.memo: dict[int, bool] = {}

    def holds(self, atom: Atom) -> bool:
        mode = atom.mode
        if mode is Mode.INDEXED or mode is Mode.SCANNED:
            return atom.id in self.raised
        if mode is Mode.FILTERED and atom.id not in self.raised:
            return False
        answer = self.memo.get(atom.id)
        if answer is None:
            answer = self.memo[atom.id] = atom.test(self.facts)
        return answer


class Node(abc.ABC):
    @abc.abstractmethod
    def holds(self, evaluation: Evaluation) -> bool:
        """The fast answer, using what the engine found for the mail."""

    @abc.abstractmethod
    def trace(self, facts: MailFacts) -> ConditionTrace:
        """The full answer with every sub-condition evaluated (no short cuts)."""

    @abc.abstractmethod
    def trigger(self) -> Trigger | None:
        """A trigger, or None if the condition may hold with no atom raised."""

    @abc.abstractmethod
    def atoms(self) -> Iterator[Atom]: ...

    @abc.abstractmethod
    def describe(self) -> str: ...


class AtomNode(Node):
    def __init__(self, atom: Atom) -> None:
        self.atom = atom

    def holds(self, evaluation: Evaluation) -> bool:
        return evaluation.holds(self.atom)

    def trace(self, facts: MailFacts) -> ConditionTrace:
        matched, seen = self.atom.trace(facts)
        return ConditionTrace("condition", self.atom.label(), matched, seen)

    def trigger(self) -> Trigger | None:
        rank = _RANK.get(self.atom.mode)
        return None if rank is None else Trigger(rank, frozenset({self.atom.id}))

    def atoms(self) -> Iterator[Atom]:
        yield self.atom

    def describe(self) -> str:
        return self.atom.label()


class AllNode(Node):
    def __init__(self, children: tuple[Node, ...]) -> None:
        self.children = children

    def holds(self, evaluation: Evaluation) -> bool:
        return all(child.holds(evaluation) for child in self.children)

    def trace(self, facts: MailFacts) -> ConditionTrace:
        traces = tuple(child.trace(facts) for child in self.children)
        return ConditionTrace("all", "all of", all(t.matched for t in traces), "", traces)

    def trigger(self) -> Trigger | None:
        # Any one child's trigger is necessary for the whole; take the most selective.
        triggers = [t for child in self.children if (t := child.trigger()) is not None]
        return min(triggers, key=lambda t: (t.rank, len(t.atoms)), default=None)

    def atoms(self) -> Iterator[Atom]:
        for child in self.children:
            yield from child.atoms()

    def describe(self) -> str:
        return "all of (" + "; ".join(c.describe() for c in self.children) + ")"


class AnyNode(Node):
    def __init__(self, children: tuple[Node, ...]) -> None:
        self.children = children

    def holds(self, evaluation: Evaluation) -> bool:
        return any(child.holds(evaluation) for child in self.children)

    def trace(self, facts: MailFacts) -> ConditionTrace:
        traces = tuple(child.trace(facts) for child in self.children)
        return ConditionTrace("any", "any of", any(t.matched for t in traces), "", traces)

    def trigger(self) -> Trigger | None:
        triggers = [child.trigger() for child in self.children]
        if not triggers or any(t is None for t in triggers):
            return None
        known = [t for t in triggers if t is not None]
        return Trigger(max(t.rank for t in known), frozenset().union(*(t.atoms for t in known)))

    def atoms(self) -> Iterator[Atom]:
        for child in self.children:
            yield from child.atoms()

    def describe(self) -> str:
        return "any of (" + "; ".join(c.describe() for c in self.children) + ")"


class NotNode(Node):
    def __init__(self, child: Node) -> None:
        self.child = child

    def holds(self, evaluation: Evaluation) -> bool:
        return not self.child.holds(evaluation)

    def trace(self, facts: MailFacts) -> ConditionTrace:
        inner = self.child.trace(facts)
        return ConditionTrace("not", "not", not inner.matched, inner.seen, (inner,))

    def trigger(self) -> Trigger | None:
        return None

    def atoms(self) -> Iterator[Atom]:
        yield from self.child.atoms()

    def describe(self) -> str:
        return f"not ({self.child.describe()})"


def matched_conditions(node: Node, trace: ConditionTrace) -> list[tuple[str, str]]:
    """The (condition, seen) pairs that made a fired rule's condition true."""
    if not trace.matched:
        return []
    if isinstance(node, AtomNode):
        return [(trace.label, trace.seen)]
    if isinstance(node, NotNode):
        return [(node.describe(), trace.seen)]
    children = node.children if isinstance(node, AllNode | AnyNode) else ()
    found: list[tuple[str, str]] = []
    for child, child_trace in zip(children, trace.children, strict=True):
        found += matched_conditions(child, child_trace)
    return found
