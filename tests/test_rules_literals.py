"""The literal prefilter behind fast routing: it may skip a regex only when the regex
cannot match, and the scanner must find exactly the needles that occur."""

from __future__ import annotations

import importlib
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maild.rules import load_rules
from maild.rules.literals import LiteralScanner, fold, glob_literals, regex_literals
from maild.types import Address, Envelope, MailClass, ParsedAttachment, ParsedMail


def test_fold_agrees_with_regex_ignorecase_over_all_of_unicode() -> None:
    """For every pair of characters `re.IGNORECASE` treats as equal, `fold` gives the same
    text. This is what lets a literal taken from an ignore-case regex be looked for in
    the folded text. Uses the tables sre compiles ignore-case patterns from."""
    sre: Any = importlib.import_module("_sre")
    casefix: Any = importlib.import_module("re._casefix")

    classes: dict[int, list[int]] = {}
    for code in range(sys.maxunicode + 1):
        if not 0xD800 <= code <= 0xDFFF:
            classes.setdefault(sre.unicode_tolower(code), []).append(code)
    differing = []
    for lower, members in classes.items():
        equal = set(members)
        for extra in casefix._EXTRA_CASES.get(lower, ()):
            equal.update(classes.get(extra, [extra]))
        if len({fold(chr(c)) for c in equal}) > 1:
            differing.append("".join(sorted(map(chr, equal))))
    assert differing == []


def test_regex_literals_for_common_patterns() -> None:
    def literals(pattern: str) -> frozenset[str] | None:
        return regex_literals(re.compile(pattern))

    assert literals(r"(?i)\b(invoice|számla|Rechnung)\b") == frozenset(
        {"invoice", "számla", "rechnung"}
    )
    assert literals(r"^\[JIRA-\d+\]") == frozenset({"[jira-"})
    assert literals(r"order\s+#?\d+") == frozenset({"order"})
    assert literals(r"(?:urgent){2,}") == frozenset({"urgent"})
    assert literals(r"\d{6}") is None  # nothing literal to look for
    assert literals(r"ab|cde") is None  # too short to be worth a filter
    assert literals(r"(?:invoice)?\d+") is None  # optional: not needed for a match


def test_glob_literals() -> None:
    assert glob_literals("*@bigcorp.example") == frozenset({"@bigcorp.example"})
    assert glob_literals("report-??-[0-9].pdf") == frozenset({"report-"})
    assert glob_literals("*.h") is None


ALPHABET = "abAIiıİßẞ-. "
pieces = st.text(alphabet=ALPHABET, min_size=1, max_size=4)


def _regex(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["lit", "lit", "seq", "alt", "rep", "class", "group", "anchor"]))
    if depth > 2 or kind == "lit":
        return re.escape(draw(pieces))
    if kind == "seq":
        return "".join(_regex(draw, depth + 1) for _ in range(draw(st.integers(2, 3))))
    if kind == "alt":
        return "(?:" + "|".join(_regex(draw, depth + 1) for _ in range(2)) + ")"
    if kind == "rep":
        return "(?:" + _regex(draw, depth + 1) + ")" + draw(st.sampled_from(["?", "*", "+", "{2}"]))
    if kind == "class":
        return draw(st.sampled_from(["[ab]", ".", r"\w", "[^a]"]))
    if kind == "group":
        flag = draw(st.sampled_from(["", "?i:", "?-i:"]))
        return f"({flag}{_regex(draw, depth + 1)})"
    return draw(st.sampled_from([r"\b", "^", "$"])) + _regex(draw, depth + 1)


@st.composite
def regexes(draw: st.DrawFn) -> re.Pattern[str]:
    flags = draw(st.sampled_from([0, re.IGNORECASE]))
    return re.compile(_regex(draw), flags)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_a_regex_never_matches_without_one_of_its_literals(data: st.DataObject) -> None:
    pattern = data.draw(regexes())
    needed = regex_literals(pattern)
    if needed is None:
        return
    text = data.draw(st.from_regex(pattern) | st.text(alphabet=ALPHABET, max_size=20))
    if pattern.search(text):
        assert any(literal in fold(text) for literal in needed), (pattern.pattern, text)


@settings(max_examples=300, deadline=None)
@given(
    needles=st.lists(st.text(alphabet="abcd", min_size=1, max_size=5), min_size=1, max_size=12),
    text=st.text(alphabet="abcde", max_size=40),
)
def test_scanner_finds_exactly_the_needles_that_occur(needles: list[str], text: str) -> None:
    signals = {needle: [i] for i, needle in enumerate(dict.fromkeys(needles))}
    raised: set[int] = set()
    LiteralScanner(signals).scan(text, raised)
    assert raised == {signals[n][0] for n in signals if n in text}


# ---------------------------------------------------------------- fast path == explanation

WORDS = ["invoice", "down", "outage", "vpn", "printer", "számla", "Straße", "İzmir", "ab"]
DOMAINS = ["bigcorp.example", "customer.example", "example.com"]


def _text_condition(draw: st.DrawFn) -> str:
    field = draw(st.sampled_from(["subject", "body", "from", "from_domain", "recipient"]))
    word = draw(st.sampled_from(WORDS))
    if field in ("from", "recipient"):
        address = f"{draw(st.sampled_from(['alice', 'billing', 'support']))}@" + draw(
            st.sampled_from(DOMAINS)
        )
        op = draw(st.sampled_from(["equals", "ends_with", "glob", "regex"]))
        value = {
            "equals": address,
            "ends_with": "@" + address.split("@")[1],
            "glob": "*@" + address.split("@")[1],
            "regex": re.escape(address.split("@")[0]) + "@",
        }[op]
        return f"{{{field}: {{{op}: '{value}'}}}}"
    if field == "from_domain":
        return f"{{from_domain: {draw(st.sampled_from(DOMAINS))}}}"
    op = draw(st.sampled_from(["contains", "regex", "starts_with", "equals", "glob"]))
    value = {
        "contains": word,
        "regex": f"(?i)\\b{word}",
        "starts_with": word,
        "equals": word,
        "glob": f"*{word}*",
    }[op]
    return f"{{{field}: {{{op}: '{value}'}}}}"


def _condition(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["leaf", "leaf", "all", "any", "not", "other"]))
    if depth > 1 or kind == "leaf":
        return _text_condition(draw)
    if kind == "other":
        return draw(
            st.sampled_from(
                ["{class: human}", "{attachment_count: {min: 1}}", "{sender_is: unknown}"]
            )
        )
    if kind == "not":
        return f"{{not: {_condition(draw, depth + 1)}}}"
    children = ", ".join(_condition(draw, depth + 1) for _ in range(draw(st.integers(1, 3))))
    return f"{{{kind}: [{children}]}}"


@st.composite
def rule_files(draw: st.DrawFn) -> str:
    lines = ["rules:"]
    for i in range(draw(st.integers(1, 12))):
        when = _condition(draw)
        stop = draw(st.booleans()) and draw(st.booleans())
        lines.append(
            f"  - {{name: r{i}, when: {when}, then: {{queue: q{i}, tags: [t{i}]}},"
            f" stop: {str(stop).lower()}}}"
        )
    return "\n".join(lines) + "\n"


@st.composite
def mails(draw: st.DrawFn) -> ParsedMail:
    def words() -> str:
        return " ".join(draw(st.lists(st.sampled_from([*WORDS, "hello", "x"]), max_size=6)))

    sender = f"{draw(st.sampled_from(['alice', 'billing']))}@{draw(st.sampled_from(DOMAINS))}"
    body = words()
    return ParsedMail(
        message_id="<x@y>",
        synthetic_message_id=False,
        body_hash="",
        in_reply_to=(),
        references=(),
        from_=draw(st.sampled_from([None, Address(sender, "")])),
        to=(Address(f"{draw(st.sampled_from(['billing', 'support']))}@example.com"),),
        cc=(),
        reply_to=(),
        subject=words(),
        date=None,
        text=body,
        text_stripped=body,
        html=None,
        attachments=tuple(
            ParsedAttachment("a.pdf", "application/pdf", 1, "")
            for _ in range(draw(st.integers(0, 1)))
        ),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routing=rule_files(), messages=st.lists(mails(), min_size=1, max_size=5))
def test_fast_routing_agrees_with_full_evaluation(routing: str, messages: list[ParsedMail]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "routing.yaml").write_text(routing, encoding="utf-8")
        rules = load_rules(folder)
    for message in messages:
        for is_reply in (False, True):
            facts = rules.facts(message, Envelope(), mail_class=MailClass.HUMAN, is_reply=is_reply)
            assert rules.decide(facts) == rules.explain(facts).decision
