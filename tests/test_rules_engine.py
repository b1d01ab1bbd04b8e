"""Routing rules: every condition, operator and action; order, stop, override and tags;
the fast evaluation agreeing with the full explanation."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import pytest

from maild.rules import RouteDecision, RuleSet, load_rules
from maild.rules.decision import AssignRequest, AutoReply, Disposition, Notify
from maild.types import (
    Address,
    Envelope,
    MailClass,
    ParsedAttachment,
    ParsedMail,
    TicketStatus,
)

TEAMS = """
teams:
  - {name: first-line, tier: 1, members: [anna@example.com, bence@example.com]}
  - {name: network, tier: 2, lead: david@example.com, members: [david@example.com]}
  - {name: finance, tier: 1}
agents:
  - {address: anna@example.com, name: Anna, skills: [passwords], languages: [hu, en]}
  - {address: bence@example.com, name: Bence}
  - {address: david@example.com, name: David, skills: [vpn]}
  - {address: fanni@example.com, name: Fanni, teams: [finance]}
  - {address: old@example.com, name: Old, active: false}
"""


def mail(**changes: Any) -> ParsedMail:
    base = ParsedMail(
        message_id="<m1@customer.example>",
        synthetic_message_id=False,
        body_hash="0" * 64,
        in_reply_to=(),
        references=(),
        from_=Address("alice@customer.example", "Alice Customer"),
        to=(Address("support@example.com", "Support"),),
        cc=(),
        reply_to=(),
        subject="Printer on fire",
        date=None,
        text="Hello,\n\nthe printer is on fire.\n\n> earlier: the toner is low\n",
        text_stripped="Hello,\n\nthe printer is on fire.",
        html=None,
        attachments=(),
        headers={"x-mailer": ("Thunderbird",)},
    )
    return replace(base, **changes)


def ruleset(tmp_path: Path, routing: str, teams: str = TEAMS) -> RuleSet:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "teams.yaml").write_text(textwrap.dedent(teams), encoding="utf-8")
    (tmp_path / "routing.yaml").write_text(textwrap.dedent(routing), encoding="utf-8")
    return load_rules(tmp_path)


def route(
    rules: RuleSet,
    message: ParsedMail,
    *,
    envelope: Envelope | None = None,
    mail_class: MailClass = MailClass.HUMAN,
    is_reply: bool = False,
    came_in_on: str | None = None,
    known_customer: bool = False,
) -> RouteDecision:
    """Route with the fast path, and check that the full explanation agrees."""
    facts = rules.facts(
        message,
        envelope or Envelope(),
        mail_class=mail_class,
        is_reply=is_reply,
        came_in_on=came_in_on,
        known_customer=known_customer,
    )
    decision = rules.decide(facts)
    assert rules.explain(facts).decision == decision
    return decision


def matches(tmp_path: Path, condition: str, message: ParsedMail, **kw: Any) -> bool:
    """Does one condition (YAML flow mapping) match the mail?"""
    rules = ruleset(
        tmp_path, f"rules:\n  - name: probe\n    when: {condition}\n    then: {{queue: hit}}\n"
    )
    return route(rules, message, **kw).queue == "hit"


# ---------------------------------------------------------------- conditions on the sender


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{from: Alice@Customer.Example}", True),  # addresses ignore case
        ("{from: bob@customer.example}", False),
        ("{from: [bob@x.example, alice@customer.example]}", True),  # a list means `in`
        ("{from: {ends_with: '@customer.example'}}", True),
        ("{from: {glob: '*@*.example'}}", True),
        ("{from: {starts_with: bob}}", False),
        ("{from_name: {contains: customer}}", True),
        ("{from_name: Alice Customer}", True),
        ("{from_domain: customer.example}", True),
        ("{from_domain: [bigcorp.example, customer.example]}", True),
        ("{from_domain: example}", False),  # the whole domain, not a part of it
        ("{from: {exists: true}}", True),
    ],
)
def test_sender_conditions(tmp_path: Path, condition: str, expected: bool) -> None:
    assert matches(tmp_path, condition, mail()) is expected


def test_mail_without_sender_matches_only_not_exists(tmp_path: Path) -> None:
    anonymous = mail(from_=None)
    assert matches(tmp_path, "{from: {exists: false}}", anonymous)
    assert not matches(tmp_path / "a", "{from_domain: {glob: '*'}}", anonymous)


# ---------------------------------------------------------------- recipients


def test_to_and_cc_read_their_headers(tmp_path: Path) -> None:
    message = mail(cc=(Address("boss@customer.example"),))
    assert matches(tmp_path / "1", "{to: SUPPORT@example.com}", message)
    assert not matches(tmp_path / "2", "{to: boss@customer.example}", message)
    assert matches(tmp_path / "3", "{cc: boss@customer.example}", message)


def test_delivered_to_covers_headers_envelope_and_the_address_it_came_in_on(
    tmp_path: Path,
) -> None:
    message = mail(headers={"delivered-to": ("billing@example.com",)})
    assert matches(tmp_path / "1", "{delivered_to: billing@example.com}", message)
    envelope = Envelope(rcpt_to=("<Hidden@Example.com>",))
    assert matches(tmp_path / "2", "{delivered_to: hidden@example.com}", mail(), envelope=envelope)
    assert matches(
        tmp_path / "3", "{delivered_to: imap@example.com}", mail(), came_in_on="IMAP@example.com"
    )
    assert not matches(tmp_path / "4", "{to: hidden@example.com}", mail(), envelope=envelope)


def test_recipient_is_any_recipient(tmp_path: Path) -> None:
    envelope = Envelope(rcpt_to=("bcc@example.com",))
    message = mail(cc=(Address("cc@example.com"),))
    for i, address in enumerate(["support@example.com", "cc@example.com", "bcc@example.com"]):
        assert matches(tmp_path / str(i), f"{{recipient: {address}}}", message, envelope=envelope)


# ---------------------------------------------------------------- text operators


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{subject: printer on fire}", True),  # equals ignores case
        ("{subject: printer}", False),  # equals is the whole value
        ("{subject: {contains: FIRE}}", True),
        ("{subject: {contains: [toner, fire]}}", True),
        ("{subject: {contains: [toner, paper]}}", False),
        ("{subject: {starts_with: ['re:', printer]}}", True),
        ("{subject: {ends_with: fire}}", True),
        ("{subject: {glob: 'print* on ?ire'}}", True),
        ("{subject: {glob: 'fire*'}}", False),  # a glob covers the whole value
        ("{subject: {regex: 'on f'}}", True),
        ("{subject: {regex: 'PRINTER'}}", False),  # a regex is as written
        ("{subject: {regex: '(?i)PRINTER'}}", True),
        ("{subject: {regex: ['^x', 'fire$']}}", True),  # any of several
        ("{subject: {in: [hello, printer on fire]}}", True),
        ("{subject: {exists: true}}", True),
        ("{subject: {contains: printer, ends_with: toner}}", False),  # operators: all hold
        ("{subject: {contains: printer, ends_with: fire}}", True),
    ],
)
def test_text_operators(tmp_path: Path, condition: str, expected: bool) -> None:
    assert matches(tmp_path, condition, mail()) is expected


def test_case_folding_covers_unicode(tmp_path: Path) -> None:
    message = mail(subject="SZÁMLA Straße İstanbul")
    assert matches(tmp_path / "1", "{subject: {contains: számla}}", message)
    assert matches(tmp_path / "2", "{subject: {contains: strasse}}", message)
    assert matches(tmp_path / "3", "{subject: {contains: istanbul}}", message)


def test_body_is_the_new_text_and_body_full_includes_quotes(tmp_path: Path) -> None:
    assert matches(tmp_path / "1", "{body: {contains: on fire}}", mail())
    assert not matches(tmp_path / "2", "{body: {contains: toner}}", mail())
    assert matches(tmp_path / "3", "{body_full: {contains: toner}}", mail())


def test_header_condition(tmp_path: Path) -> None:
    message = mail(headers={"x-spam-flag": ("YES",), "received": ("a", "by mx.example.com")})
    assert matches(tmp_path / "1", "{header: {name: X-Spam-Flag, equals: yes}}", message)
    assert matches(tmp_path / "2", "{header: {name: Received, contains: mx.example}}", message)
    assert matches(tmp_path / "3", "{header: {name: X-Mailer, exists: false}}", message)
    assert not matches(tmp_path / "4", "{header: {name: x-spam-flag, exists: false}}", message)


# ---------------------------------------------------------------- attachments


def attachment(name: str, content_type: str, size: int) -> ParsedAttachment:
    return ParsedAttachment(name, content_type, size, "0" * 64)


ATTACHED = mail(
    attachments=(
        attachment("invoice.PDF", "application/pdf", 200_000),
        attachment("logo.png", "image/png", 3_000),
    )
)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{attachment: {name: {glob: '*.pdf'}}}", True),
        ("{attachment: {content_type: {starts_with: image/}}}", True),
        ("{attachment: {name: {ends_with: .pdf}, size: {min: 100KB}}}", True),
        # One attachment must match every part: the PNG is small, the PDF is not an image.
        ("{attachment: {content_type: {starts_with: image/}, size: {min: 100KB}}}", False),
        ("{attachment: {size: {max: 1KB}}}", False),
        ("{attachment: {size: {equals: 3000}}}", True),
        ("{attachment_count: 2}", True),
        ("{attachment_count: {min: 3}}", False),
        ("{attachment_count: {max: 2}}", True),
    ],
)
def test_attachment_conditions(tmp_path: Path, condition: str, expected: bool) -> None:
    assert matches(tmp_path, condition, ATTACHED) is expected


def test_no_attachments(tmp_path: Path) -> None:
    assert matches(tmp_path / "1", "{attachment_count: 0}", mail())
    assert not matches(tmp_path / "2", "{attachment: {name: {glob: '*'}}}", mail())


# ---------------------------------------------------------------- class, reply, sender


def test_class_condition(tmp_path: Path) -> None:
    assert matches(tmp_path / "1", "{class: bulk}", mail(), mail_class=MailClass.BULK)
    assert matches(
        tmp_path / "2", "{class: [auto_reply, bounce]}", mail(), mail_class=MailClass.BOUNCE
    )
    assert not matches(tmp_path / "3", "{class: human}", mail(), mail_class=MailClass.BULK)


def test_is_reply_condition(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """
        rules:
          - name: follow-ups only
            on: [new, reply]
            when: {is_reply: true}
            then: {queue: followups}
        """,
    )
    assert route(rules, mail(), is_reply=True).queue == "followups"
    assert route(rules, mail(), is_reply=False).queue is None


def test_sender_is_agent_customer_or_unknown(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """
        rules:
          - {name: agents, when: {sender_is: agent}, then: {queue: agent}}
          - {name: customers, when: {sender_is: customer}, then: {queue: customer}}
          - {name: strangers, when: {sender_is: unknown}, then: {queue: unknown}}
        """,
    )
    agent_mail = mail(from_=Address("anna@example.com", "Anna"))
    assert route(rules, agent_mail).queue == "agent"
    assert route(rules, agent_mail, known_customer=True).queue == "agent"
    assert route(rules, mail(), known_customer=True).queue == "customer"
    assert route(rules, mail()).queue == "unknown"


# ---------------------------------------------------------------- combinators


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{all: [{subject: {contains: printer}}, {from_domain: customer.example}]}", True),
        ("{all: [{subject: {contains: printer}}, {from_domain: other.example}]}", False),
        ("{any: [{subject: {contains: toner}}, {from_domain: customer.example}]}", True),
        ("{any: [{subject: {contains: toner}}, {from_domain: other.example}]}", False),
        ("{not: {subject: {contains: toner}}}", True),
        ("{not: {any: [{subject: {contains: toner}}, {class: human}]}}", False),
        # Several keys in one mapping must all hold.
        ("{subject: {contains: printer}, from_domain: other.example}", False),
        # Nested: all of (any of (...), not (...)).
        (
            "{all: [{any: [{to: billing@example.com}, {subject: {regex: '(?i)fire'}}]},"
            " {not: {sender_is: agent}}]}",
            True,
        ),
    ],
)
def test_combinators(tmp_path: Path, condition: str, expected: bool) -> None:
    assert matches(tmp_path, condition, mail()) is expected


def test_when_as_a_list_means_all(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """
        rules:
          - name: list
            when:
              - subject: {contains: printer}
              - from_domain: customer.example
            then: {queue: hit}
        """,
    )
    assert route(rules, mail()).queue == "hit"
    assert route(rules, mail(subject="Toner")).queue is None


# ---------------------------------------------------------------- actions


def test_every_field_action(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """
        rules:
          - name: everything
            then:
              queue: billing
              team: network
              priority: urgent
              type: incident
              status: open
              sla: gold
              tags: [a, b]
              auto_reply: requester/ticket_created
        """,
    )
    decision = route(rules, mail())
    assert decision.queue == "billing"
    assert decision.team == "network"
    assert decision.tier == 2  # the team's tier
    assert decision.priority == "urgent"
    assert decision.ticket_type == "incident"
    assert decision.status is TicketStatus.OPEN
    assert decision.sla == "gold"
    assert decision.tags == ("a", "b")
    assert decision.auto_reply == AutoReply("requester/ticket_created")
    assert decision.disposition is None


def test_tier_action_overrides_the_team_tier(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "rules:\n  - {name: t, then: {team: network, tier: 3}}\n")
    assert route(rules, mail()).tier == 3


def test_auto_reply_none(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "rules:\n  - {name: quiet, then: {auto_reply: none}}\n")
    assert route(rules, mail()).auto_reply == AutoReply(None)
    rules = ruleset(tmp_path, "rules:\n  - {name: silent, then: {queue: q}}\n")
    assert route(rules, mail()).auto_reply is None  # the rules did not say


def test_assign_actions(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """
        rules:
          - name: to a team
            when: {subject: {contains: vpn}}
            then: {assign: {team: network, by: least_loaded, skill: vpn}}
          - name: to an agent
            when: {subject: {contains: printer}}
            then: {assign: anna@example.com}
          - name: by language
            when: {subject: {contains: jelszó}}
            then: {assign: {team: first-line, language: hu}}
        """,
    )
    vpn = route(rules, mail(subject="VPN broken"))
    assert vpn.assign == AssignRequest(team="network", by="least_loaded", skill="vpn")
    assert vpn.team == "network"  # assigning within a team gives it the ticket
    assert route(rules, mail()).assign == AssignRequest(agent="anna@example.com")
    language = route(rules, mail(subject="Új jelszó"))
    assert language.assign == AssignRequest(team="first-line", by="round_robin", language="hu")


def test_notify_accumulates(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """
        rules:
          - name: lead
            then: {notify: {agents: [david@example.com], template: agent/new_ticket}}
          - name: team and outsiders
            then:
              notify: {teams: [network], addresses: [Boss@Customer.example], template: agent/vip}
        """,
    )
    assert route(rules, mail()).notify == (
        Notify(agents=("david@example.com",), template="agent/new_ticket"),
        Notify(teams=("network",), addresses=("boss@customer.example",), template="agent/vip"),
    )


@pytest.mark.parametrize("action", ["quarantine", "drop"])
def test_quarantine_and_drop(tmp_path: Path, action: Literal["quarantine", "drop"]) -> None:
    rules = ruleset(tmp_path, f"rules:\n  - {{name: x, then: {{{action}: looks like spam}}}}\n")
    assert route(rules, mail()).disposition == Disposition(action, "looks like spam")


# ---------------------------------------------------------------- semantics


SEMANTICS = """
rules:
  - name: base
    then: {queue: support, priority: normal, tags: [new]}
  - name: printers
    when: {subject: {contains: printer}}
    then: {queue: hardware, tags: [printer]}
  - name: fire
    when: {subject: {contains: fire}}
    then: {priority: urgent, tags: {add: [fire], remove: [new]}}
    stop: true
  - name: after stop
    then: {queue: never, tags: [never]}
  - name: follow-ups
    on: [reply]
    when: {subject: {contains: printer}}
    then: {tags: [printer-followup]}
"""


def test_every_matching_rule_applies_in_order_until_stop(tmp_path: Path) -> None:
    decision = route(ruleset(tmp_path, SEMANTICS), mail())
    assert [f.name for f in decision.fired] == ["base", "printers", "fire"]
    assert decision.queue == "hardware"  # later value overrides
    assert decision.priority == "urgent"
    assert decision.tags == ("printer", "fire")  # tags accumulate; `remove` takes away
    assert decision.tags_removed == ("new",)


def test_without_the_stopping_rule_later_rules_apply(tmp_path: Path) -> None:
    decision = route(ruleset(tmp_path, SEMANTICS), mail(subject="Printer jammed"))
    assert [f.name for f in decision.fired] == ["base", "printers", "after stop"]
    assert decision.queue == "never"
    assert decision.tags == ("new", "printer", "never")


def test_reply_runs_only_rules_marked_for_replies(tmp_path: Path) -> None:
    decision = route(ruleset(tmp_path, SEMANTICS), mail(), is_reply=True)
    assert [f.name for f in decision.fired] == ["follow-ups"]
    assert decision.tags == ("printer-followup",)
    assert decision.queue is None


def test_tag_added_after_removal_is_added(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """
        rules:
          - {name: one, then: {tags: {remove: [x]}}}
          - {name: two, then: {tags: [x]}}
        """,
    )
    decision = route(rules, mail())
    assert decision.tags == ("x",)
    assert decision.tags_removed == ()


def test_fired_rules_record_the_conditions_that_matched(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """
        rules:
          - name: billing
            when:
              any:
                - to: billing@example.com
                - subject: {regex: '(?i)\\b(invoice|számla)\\b'}
            then: {queue: billing}
        """,
    )
    (fired,) = route(rules, mail(subject="Számla 2024/11")).fired
    assert fired.name == "billing"
    assert fired.line == 3
    assert fired.file.endswith("routing.yaml")
    assert [(m.condition, m.seen) for m in fired.matched] == [
        (r"subject regex '(?i)\b(invoice|számla)\b'", "'Számla' in 'Számla 2024/11'")
    ]
    assert fired.actions == ("queue = billing",)


def test_rule_without_condition_matches_every_mail(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "rules:\n  - {name: all, then: {queue: q}}\n")
    decision = route(rules, mail(from_=None, subject="", text="", text_stripped=""))
    assert decision.queue == "q"
    assert decision.fired[0].matched == ()


def test_empty_rule_set_decides_nothing(tmp_path: Path) -> None:
    assert route(ruleset(tmp_path, "rules: []\n"), mail()) == RouteDecision()


def test_explanation_shows_every_rule_and_condition(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, SEMANTICS)
    facts = rules.facts(mail(), Envelope(), mail_class=MailClass.HUMAN, is_reply=False)
    explanation = rules.explain(facts)
    assert [(t.name, t.status) for t in explanation.rules] == [
        ("base", "fired"),
        ("printers", "fired"),
        ("fire", "fired"),
        ("after stop", "not reached"),
        ("follow-ups", "skipped"),
    ]
    printers = explanation.rules[1].condition
    assert printers is not None
    assert (printers.label, printers.matched, printers.seen) == (
        "subject contains 'printer'",
        True,
        "'printer' in 'Printer on fire'",
    )


def test_route_builds_facts_from_mail_and_envelope(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path, "rules:\n  - {name: r, when: {recipient: x@example.com}, then: {queue: q}}\n"
    )
    decision = rules.route(
        mail(), Envelope(rcpt_to=("x@example.com",)), mail_class=MailClass.HUMAN, is_reply=False
    )
    assert decision.queue == "q"
    assert decision.as_dict()["queue"] == "q"


def test_only_rules_the_lookups_raise_are_evaluated(tmp_path: Path) -> None:
    """Equality is a dict lookup and `contains` / regex literals one scan per field, so a
    mail leaves only the rules that may match, however many there are."""
    lines = ["rules:"]
    for i in range(300):
        lines.append(
            f"  - {{name: sender {i}, when: {{from: c{i}@customer.example}}, then: {{queue: s}}}}"
        )
        lines.append(
            f"  - {{name: domain {i}, when: {{from_domain: d{i}.example}}, then: {{queue: d}}}}"
        )
        lines.append(
            f"  - {{name: subject {i}, when: {{subject: {{regex: '(?i)\\bword{i}\\b'}}}},"
            f" then: {{queue: r}}}}"
        )
        lines.append(
            f"  - {{name: body {i}, when: {{body: {{contains: phrase {i}!}}}}, then: {{queue: b}}}}"
        )
    lines.append("  - {name: unindexable, when: {not: {class: bulk}}, then: {tags: [x]}}")
    rules = ruleset(tmp_path, "\n".join(lines) + "\n")
    message = mail(
        from_=Address("c7@customer.example", ""),
        subject="About WORD12 and word120",
        text_stripped="Hello, phrase 5! and phrase 250!",
    )
    facts = rules.facts(message, Envelope(), mail_class=MailClass.HUMAN, is_reply=False)
    # `subject 1` is considered because its literal "word1" occurs (in "word12"); its
    # regex then decides (\b makes it fail). Nothing else of the 1,201 rules is looked at.
    assert rules.considered(facts) == (
        "subject 1",
        "body 5",
        "sender 7",
        "subject 12",
        "subject 120",
        "body 250",
        "unindexable",
    )
    decision = route(rules, message)
    assert [f.name for f in decision.fired] == list(rules.considered(facts))[1:]
