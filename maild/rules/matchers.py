"""Operators on one text value, compiled once at load: equals, in, contains, starts_with,
ends_with, glob, regex. Every operator but `regex` compares `fold`ed text; a regex sees
the value as written (add `(?i)` to ignore case)."""

from __future__ import annotations

import abc
import fnmatch
import re
from collections.abc import Hashable

import regex

from maild.errors import Quarantine
from maild.rules.literals import MIN_LITERAL, fold, glob_literals, regex_literals

# How long one rule regex may search one value. `re` cannot be stopped once it is
# backtracking, so an operator's pattern gone catastrophic on some mail would hold a
# worker (and the writer lock with it) for good; the `regex` module stops at this.
REGEX_SECONDS = 1.0


def quote(text: str, limit: int = 80) -> str:
    """A value as shown in explanations: one line, shortened, quoted."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return repr(flat)


def _listing(items: tuple[str, ...], *, as_list: bool = False) -> str:
    """Arguments as written in the file (no escaping), quoted."""
    quoted = [f"'{item}'" for item in items]
    return quoted[0] if len(quoted) == 1 and not as_list else "[" + ", ".join(quoted) + "]"


class Matcher(abc.ABC):
    """One operator with its argument. `hit` returns what matched in a value, or None."""

    op: str

    @abc.abstractmethod
    def key(self) -> Hashable: ...

    @abc.abstractmethod
    def label(self) -> str: ...

    @abc.abstractmethod
    def hit(self, raw: str, folded: str) -> str | None: ...

    def matches(self, raw: str, folded: str) -> bool:
        return self.hit(raw, folded) is not None

    def equal_values(self) -> frozenset[str] | None:
        """Folded values this operator is exactly equality with, for dict lookups."""
        return None

    def exact_needles(self) -> frozenset[str] | None:
        """Folded needles whose occurrence is exactly this operator's answer."""
        return None

    def needed_literals(self) -> frozenset[str] | None:
        """Folded literals of which one must occur in a value this operator matches."""
        return None


class Equals(Matcher):
    """`equals` (one value) and `in` (a list): the whole value, ignoring case."""

    def __init__(self, op: str, values: tuple[str, ...]) -> None:
        self.op = op
        self.values = values
        self._folded = frozenset(fold(v) for v in values)

    def key(self) -> Hashable:
        return ("equals", self._folded)

    def label(self) -> str:
        return f"{self.op} {_listing(self.values, as_list=self.op == 'in')}"

    def hit(self, raw: str, folded: str) -> str | None:
        return raw if folded in self._folded else None

    def equal_values(self) -> frozenset[str]:
        return self._folded


class Contains(Matcher):
    op = "contains"

    def __init__(self, needles: tuple[str, ...]) -> None:
        self.needles = needles
        self._folded = tuple(dict.fromkeys(fold(n) for n in needles))

    def key(self) -> Hashable:
        return ("contains", frozenset(self._folded))

    def label(self) -> str:
        return f"contains {_listing(self.needles)}"

    def hit(self, raw: str, folded: str) -> str | None:
        for needle in self._folded:
            if needle in folded:
                return needle
        return None

    def exact_needles(self) -> frozenset[str] | None:
        if min(map(len, self._folded)) < MIN_LITERAL:
            return None
        return frozenset(self._folded)


class _Affix(Matcher):
    def __init__(self, affixes: tuple[str, ...]) -> None:
        self.affixes = affixes
        self._folded = tuple(dict.fromkeys(fold(a) for a in affixes))

    def key(self) -> Hashable:
        return (self.op, frozenset(self._folded))

    def label(self) -> str:
        return f"{self.op} {_listing(self.affixes)}"

    def needed_literals(self) -> frozenset[str] | None:
        if min(map(len, self._folded)) < MIN_LITERAL:
            return None
        return frozenset(self._folded)


class StartsWith(_Affix):
    op = "starts_with"

    def hit(self, raw: str, folded: str) -> str | None:
        for prefix in self._folded:
            if folded.startswith(prefix):
                return prefix
        return None


class EndsWith(_Affix):
    op = "ends_with"

    def hit(self, raw: str, folded: str) -> str | None:
        for suffix in self._folded:
            if folded.endswith(suffix):
                return suffix
        return None


class Glob(Matcher):
    """Shell-style `*`, `?`, `[abc]` over the whole value, ignoring case."""

    op = "glob"

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.patterns = patterns
        folded = [fold(p) for p in patterns]
        self._match = re.compile("|".join(fnmatch.translate(p) for p in folded)).match
        literal_sets = [glob_literals(p) for p in folded]
        self._literals = (
            frozenset().union(*(s for s in literal_sets if s))
            if all(s is not None for s in literal_sets)
            else None
        )

    def key(self) -> Hashable:
        return ("glob", frozenset(fold(p) for p in self.patterns))

    def label(self) -> str:
        return f"glob {_listing(self.patterns)}"

    def hit(self, raw: str, folded: str) -> str | None:
        return raw if self._match(folded) else None

    def needed_literals(self) -> frozenset[str] | None:
        return self._literals


class Regex(Matcher):
    """A search with the pattern as written; any of several patterns. `patterns` as `re`
    reads them (for the literals and the labels), the search by the `regex` module, which
    takes the same syntax and can be stopped."""

    op = "regex"

    def __init__(self, patterns: tuple[re.Pattern[str], ...]) -> None:
        self.patterns = patterns
        self._searches = tuple(regex.compile(p.pattern, p.flags) for p in patterns)
        literal_sets = [regex_literals(p) for p in patterns]
        self._literals = (
            frozenset().union(*(s for s in literal_sets if s))
            if all(s is not None for s in literal_sets)
            else None
        )

    def key(self) -> Hashable:
        return ("regex", tuple((p.pattern, p.flags) for p in self.patterns))

    def label(self) -> str:
        return f"regex {_listing(tuple(p.pattern for p in self.patterns))}"

    def hit(self, raw: str, folded: str) -> str | None:
        for search in self._searches:
            try:
                found = search.search(raw, timeout=REGEX_SECONDS)
            except TimeoutError:
                raise Quarantine(
                    "route",
                    f"timeout: regex '{search.pattern}' searched one value for more than "
                    f"{REGEX_SECONDS:g} s (it backtracks without end; fix the rule)",
                ) from None
            if found is not None:
                return str(found.group())
        return None

    def needed_literals(self) -> frozenset[str] | None:
        return self._literals
