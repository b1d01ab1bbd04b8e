"""Routing-rules benchmark: time per mail to evaluate 10, 100 and 1,000 rules, beside the
time per mail to parse, measured in the same run.

    python bench/rules.py [--count 500] [--seed 1] [--sizes 10,100,1000] [--workdir DIR]

1. generates the deterministic corpus (bench/corpus.py) into a temp dir (or DIR/corpus)
   and parses every mail once with maild's parse step, timing it (best of 2 passes);
2. for each size, writes a realistic rule set (a mix of sender address, sender domain,
   recipient, subject regex and body contains rules, and a few combinations; no rule
   stops, so every rule is considered for every mail), loads it with maild, and times
   `RuleSet.route()` per mail: the mail's facts, the lookups and scans, the rules
   that may hold, the decision (best of 3 passes for the mean; p50/p99 over all);
3. beside it, a naive evaluation of the same rules (each rule tests its own conditions
   on the mail, nothing shared) shows what the compiled form saves.

Targets: <= 0.2 ms per mail at 1,000 rules, and <= 10 % of the parse time per mail.
A table goes to stdout, the figures to bench/out/rules.json. Unlike the other benchmarks
this one imports maild: rule evaluation happens in-process.

Exit status: 0 all targets met; 1 a target missed.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus

from maild.pipeline.classify import classify
from maild.pipeline.parse import parse
from maild.rules import RuleSet, load_rules
from maild.rules.facts import MailFacts
from maild.rules.nodes import AllNode, AnyNode, AtomNode, Node, NotNode
from maild.types import Envelope, MailClass, ParsedMail

TARGET_EVAL_US = 200.0
TARGET_SHARE = 0.10
TARGET_SIZE = 1000
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out" / "rules.json"

# --------------------------------------------------------------------------- rule sets

# Words that occur in the corpus (so some rules fire), and many that do not (as in a
# real rule set, most rules are about other customers and other products).
CORPUS_WORDS = [
    "invoice", "rechnung", "számla", "refund", "password", "passworts", "jelszó", "login",
    "anmelden", "export", "contract", "vertrag", "szerződés", "crash", "update", "frissítés",
    "order", "bestellung", "rendelés", "urgent", "dringend", "sürgős", "api", "users",
]  # fmt: skip
PRODUCTS = [
    "orion", "vega", "atlas", "nimbus", "quasar", "zephyr", "helix", "cobalt", "aurora",
    "lumen", "pulsar", "sirius", "titan", "nova", "meridian", "polaris", "kestrel", "onyx",
]  # fmt: skip
TOPICS = [
    "licence", "renewal", "onboarding", "migration", "webhook", "sso", "saml", "ldap",
    "backup", "restore", "quota", "latency", "timeout", "certificate", "dns", "vpn",
    "gdpr", "audit", "shipment", "warranty", "replacement", "downgrade", "upgrade",
    "integration", "sandbox", "invoice copy", "credit note", "purchase order", "sla breach",
]  # fmt: skip


def _words(rng: random.Random, k: int) -> list[str]:
    pool = CORPUS_WORDS if rng.random() < 0.15 else TOPICS
    words = rng.sample(pool, k)
    return [f"{w} {rng.choice(PRODUCTS)}" if rng.random() < 0.4 else w for w in words]


def _domain(rng: random.Random) -> str:
    if rng.random() < 0.05:
        return rng.choice(corpus.DOMAINS[rng.choice(["en", "de", "hu"])])
    return f"{rng.choice(PRODUCTS)}-{rng.choice(TOPICS).split()[0]}{rng.randrange(100)}.example"


def _condition(kind: str, rng: random.Random) -> str:
    if kind == "address":
        name = rng.choice(["anna", "peter", "julia", "laszlo", "max", "sofia"])
        local = f"{name}{rng.randrange(999)}"
        return f"{{from: {local}@{_domain(rng)}}}"
    if kind == "recipient":
        return (
            f"{{recipient: {rng.choice(TOPICS).replace(' ', '-')}{rng.randrange(50)}@example.com}}"
        )
    if kind == "domain":
        domains = ", ".join(_domain(rng) for _ in range(rng.randint(1, 3)))
        return f"{{from_domain: [{domains}]}}"
    if kind == "subject":
        words = "|".join(_words(rng, rng.randint(1, 3)))
        return f"{{subject: {{regex: '(?i)\\b({words})\\b'}}}}"
    if kind == "body":
        phrases = ", ".join(f"'{w}'" for w in _words(rng, rng.randint(1, 3)))
        return f"{{body: {{contains: [{phrases}]}}}}"
    return (
        f"{{all: [{_condition('domain', rng)}, "
        f"{{any: [{_condition('subject', rng)}, {_condition('body', rng)}]}}]}}"
    )


KINDS = (
    ("address", 0.25),
    ("recipient", 0.05),
    ("domain", 0.25),
    ("subject", 0.20),
    ("body", 0.20),
    ("combination", 0.05),
)


def rule_set(size: int, seed: int) -> str:
    """A routing file of `size` rules, the same for the same (size, seed)."""
    rng = random.Random(f"{seed}:{size}")
    lines = ["rules:"]
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    for i in range(size):
        kind = rng.choices(kinds, weights)[0]
        then = f"{{queue: q{i % 37}, tags: [{kind}-{i}]"
        then += f", priority: {rng.choice(['high', 'urgent'])}}}" if rng.random() < 0.2 else "}"
        lines.append(f"  - name: {kind} {i}")
        lines.append(f"    when: {_condition(kind, rng)}")
        lines.append(f"    then: {then}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- timing


class Mail:
    __slots__ = ("mail", "mail_class")

    def __init__(self, mail: ParsedMail, mail_class: MailClass) -> None:
        self.mail = mail
        self.mail_class = mail_class


def parse_all(paths: list[Path]) -> tuple[list[Mail], float]:
    """Parse every mail (best of 2 passes); returns the mails and µs per mail."""
    raws = [p.read_bytes() for p in paths]
    best = float("inf")
    mails: list[Mail] = []
    for _ in range(2):
        gc.collect()
        start = time.perf_counter()
        parsed = [parse(raw) for raw in raws]
        best = min(best, time.perf_counter() - start)
        mails = [Mail(m, classify(m, Envelope())) for m in parsed]
    return mails, best / len(raws) * 1e6


def time_route(rules: RuleSet, mails: list[Mail], passes: int = 3) -> dict[str, float]:
    envelope = Envelope(rcpt_to=("support@example.com",))
    samples: list[float] = []
    means: list[float] = []
    fired = 0
    for _ in range(passes):
        gc.collect()
        this_pass: list[float] = []
        fired = 0
        for m in mails:
            start = time.perf_counter()
            decision = rules.route(m.mail, envelope, mail_class=m.mail_class, is_reply=False)
            this_pass.append(time.perf_counter() - start)
            fired += len(decision.fired)
        samples += this_pass
        means.append(statistics.fmean(this_pass))
    samples.sort()
    return {
        "mean_us": min(means) * 1e6,
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
        "fired_per_mail": fired / len(mails),
    }


def _holds(node: Node, facts: MailFacts) -> bool:
    if isinstance(node, AtomNode):
        return node.atom.test(facts)
    if isinstance(node, AllNode):
        return all(_holds(child, facts) for child in node.children)
    if isinstance(node, AnyNode):
        return any(_holds(child, facts) for child in node.children)
    assert isinstance(node, NotNode)
    return not _holds(node.child, facts)


def time_naive(rules: RuleSet, mails: list[Mail]) -> float:
    """Every rule tests its own conditions (values cached per mail, as a fair baseline)."""
    envelope = Envelope(rcpt_to=("support@example.com",))
    gc.collect()
    start = time.perf_counter()
    for m in mails:
        facts = rules.facts(m.mail, envelope, mail_class=m.mail_class, is_reply=False)
        for rule in rules.rules:
            if rule.when is None or _holds(rule.when, facts):
                pass
    return (time.perf_counter() - start) / len(mails) * 1e6


# --------------------------------------------------------------------------- main


def run(count: int, seed: int, sizes: list[int], workdir: Path) -> dict[str, Any]:
    corpus_dir = workdir / "corpus"
    paths = sorted(corpus_dir.glob("*.eml")) if corpus_dir.is_dir() else []
    if len(paths) != count:
        paths = corpus.generate(corpus_dir, count, seed)
    mails, parse_us = parse_all(paths)
    rows = []
    for size in sizes:
        rules_dir = workdir / f"rules-{size}"
        rules_dir.mkdir(parents=True, exist_ok=True)
        (rules_dir / "routing.yaml").write_text(rule_set(size, seed), encoding="utf-8")
        start = time.perf_counter()
        rules = load_rules(rules_dir)
        load_ms = (time.perf_counter() - start) * 1e3
        timing = time_route(rules, mails)
        rows.append(
            {
                "rules": size,
                "load_ms": load_ms,
                **timing,
                "naive_us": time_naive(rules, mails),
                "share_of_parse": timing["mean_us"] / parse_us,
            }
        )
    return {"count": count, "seed": seed, "parse_us_per_mail": parse_us, "sizes": rows}


def table(result: dict[str, Any]) -> str:
    head = (
        f"{'rules':>6} {'load ms':>8} {'eval µs/mail':>13} {'p50':>7} {'p99':>7}"
        f" {'naive µs':>9} {'fired/mail':>10} {'parse µs/mail':>14} {'eval/parse':>10}"
    )
    lines = [head, "-" * len(head)]
    for row in result["sizes"]:
        lines.append(
            f"{row['rules']:>6} {row['load_ms']:>8.1f} {row['mean_us']:>13.1f}"
            f" {row['p50_us']:>7.1f} {row['p99_us']:>7.1f} {row['naive_us']:>9.1f}"
            f" {row['fired_per_mail']:>10.2f} {result['parse_us_per_mail']:>14.1f}"
            f" {row['share_of_parse']:>9.1%}"
        )
    return "\n".join(lines)


def verdict(result: dict[str, Any]) -> list[str]:
    """Missed targets, for the row with TARGET_SIZE rules (or the largest measured)."""
    row = max(result["sizes"], key=lambda r: (r["rules"] == TARGET_SIZE, r["rules"]))
    missed = []
    if row["mean_us"] > TARGET_EVAL_US:
        missed.append(f"{row['mean_us']:.1f} µs per mail > {TARGET_EVAL_US:.0f} µs")
    if row["share_of_parse"] > TARGET_SHARE:
        missed.append(f"{row['share_of_parse']:.1%} of the parse time > {TARGET_SHARE:.0%}")
    return missed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=500, help="mails in the corpus")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sizes", default="10,100,1000", help="rule set sizes, comma-separated")
    ap.add_argument("--workdir", type=Path, help="keep the corpus and rule sets here")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        result = run(args.count, args.seed, sizes, workdir)
    result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["python"] = platform.python_version()
    result["machine"] = platform.machine()
    print(f"{args.count} mails (seed {args.seed}), parsed once each with maild's parse step")
    print(table(result))
    missed = verdict(result)
    result["targets_met"] = not missed
    print(
        f"targets at {TARGET_SIZE} rules: <= {TARGET_EVAL_US:.0f} µs per mail and"
        f" <= {TARGET_SHARE:.0%} of parse: "
        + ("met" if not missed else "MISSED: " + "; ".join(missed))
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
