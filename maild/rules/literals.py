"""Case folding, and finding many literal strings in one pass over a text.

This is what keeps a rule set's cost per mail from growing with every rule doing its
own scan: every `contains` needle of a field, and a literal that each regex, glob,
`starts_with` and `ends_with` cannot match without, go into one `LiteralScanner` per
field. One pass over the mail's text tells which needles occur; a `contains` is then
answered exactly, and a regex is run only if its literal was seen (the idea of RE2's
FilteredRE2, with Python's own `re` doing the scan).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping, Set
from typing import Any

# Shorter literals occur nearly everywhere: a filter on them costs more than it saves.
MIN_LITERAL = 3


def fold(text: str) -> str:
    """The case-insensitive form every non-regex comparison uses.

    `str.casefold`, with Turkish dotted and dotless i (İ, ı) read as i. Works character
    by character, so `a in b` implies `fold(a) in fold(b)`; and for every character that
    Python's `re.IGNORECASE` treats as equal to another, both fold the same (checked over
    all of Unicode by the tests). Those two facts make the regex prefilter safe.
    """
    return text.replace("İ", "i").replace("ı", "i").casefold()


# `re._parser` is private but has the same shape from 3.11 on. Anything we do not
# recognise in it means "no literal known", which only costs speed, never a match.
try:
    _parser: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - a Python without it runs every regex
    _parser = None

_Requirement = frozenset[str]  # at least one of these occurs in any text the pattern matches


def regex_literals(pattern: re.Pattern[str]) -> frozenset[str] | None:
    """Folded strings of which at least one occurs in every text `pattern` matches, or
    None when no useful (long enough) set is known."""
    if _parser is None:
        return None
    try:
        tree = _parser.parse(pattern.pattern, pattern.flags)
    except (re.error, RecursionError, TypeError, ValueError):
        return None
    return _useful(_sequence(tree))


def _useful(requirement: _Requirement | None) -> frozenset[str] | None:
    if requirement is None or min(map(len, requirement)) < MIN_LITERAL:
        return None
    return requirement


def _better(a: _Requirement | None, b: _Requirement | None) -> _Requirement | None:
    """Either holds for the whole sequence; keep the more selective one."""
    if a is None:
        return b
    if b is None:
        return a
    rank_a = (min(map(len, a)), -len(a))
    rank_b = (min(map(len, b)), -len(b))
    return a if rank_a >= rank_b else b


def _sequence(items: Iterable[tuple[Any, Any]]) -> _Requirement | None:
    best: _Requirement | None = None
    run: list[str] = []

    def flush() -> None:
        nonlocal best
        if run:
            best = _better(best, frozenset({fold("".join(run))}))
            run.clear()

    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            run.append(chr(arg))
            continue
        flush()
        if name == "SUBPATTERN":
            best = _better(best, _sequence(arg[3]))
        elif name == "ATOMIC_GROUP":
            best = _better(best, _sequence(arg))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if arg[0] >= 1:  # repeated at least once: what it needs, the whole needs
                best = _better(best, _sequence(arg[2]))
        elif name == "BRANCH":
            alternatives = [_sequence(branch) for branch in arg[1]]
            if alternatives and all(alt is not None for alt in alternatives):
                best = _better(best, frozenset().union(*(a for a in alternatives if a)))
        # Anything else (classes, anchors, lookarounds, back references) asks for no
        # particular literal, and ends the run of literal characters.
    flush()
    return best


def glob_literals(pattern: str) -> frozenset[str] | None:
    """The longest literal part of a (folded) glob pattern, if long enough to filter on."""
    parts = re.split(r"\*|\?|\[[^\]]*\]?", pattern)
    longest = max(parts, key=len, default="")
    return frozenset({longest}) if len(longest) >= MIN_LITERAL else None


class LiteralScanner:
    """Finds which of many needles occur in a text, with one regular-expression pass.

    The needles become one trie-shaped pattern that at any position matches the longest
    needle starting there; every needle that is a substring of a found one is then known
    to occur too. Searching again from the position after each match start finds every
    position where a needle starts, so the answer is exact.
    """

    def __init__(self, needles: Mapping[str, Iterable[int]]) -> None:
        """`needles` maps each (folded, non-empty) needle to the signals it raises."""
        own = {needle: frozenset(signals) for needle, signals in needles.items() if needle}
        self._signals: dict[str, frozenset[int]] = {}
        for needle in own:
            raised: set[int] = set()
            for other in _substrings(needle, own.keys()):
                raised |= own[other]
            self._signals[needle] = frozenset(raised)
        self._search = re.compile(_trie_pattern(own)).search if own else None

    def scan(self, text: str, raised: set[int]) -> None:
        """Add to `raised` the signals of every needle occurring in `text` (folded)."""
        search = self._search
        if search is None:
            return
        signals = self._signals
        position = 0
        while (match := search(text, position)) is not None:
            raised |= signals[match.group()]
            position = match.start() + 1


def _substrings(needle: str, needles: Set[str]) -> Iterable[str]:
    size = len(needle)
    for start in range(size):
        for end in range(start + 1, size + 1):
            if needle[start:end] in needles:
                yield needle[start:end]


def _trie_pattern(needles: Iterable[str]) -> str:
    trie: dict[str, Any] = {}
    for needle in needles:
        node = trie
        for char in needle:
            node = node.setdefault(char, {})
        node[""] = {}  # end of a needle
    return _emit(trie)


def _emit(node: dict[str, Any]) -> str:
    """The pattern for a trie node, preferring longer needles (greedy optional ends)."""
    ends_here = "" in node
    branches = []
    for char in sorted(c for c in node if c):
        child = node[char]
        chain = re.escape(char)
        # Collapse single-child chains so nesting grows with branching, not length.
        while len(child) == 1 and "" not in child:
            ((next_char, child),) = child.items()
            chain += re.escape(next_char)
        branches.append(chain + _emit(child))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    if ends_here:
        return f"(?:{body})?"
    return body
