"""Rule files are validated as a whole before use; every problem names file:line:column."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from maild.rules import KnownNames, RuleError, load_rules
from maild.rules.registry import CONDITIONS, DuplicateName, Registry

TEAMS = """\
teams:
  - {name: network, tier: 2, members: [david@example.com]}
  - {name: finance, tier: 1, members: [fanni@example.com]}
agents:
  - {address: david@example.com, name: David, skills: [vpn]}
  - {address: fanni@example.com, name: Fanni}
  - {address: old@example.com, name: Old, active: false}
"""


def problems(tmp_path: Path, files: dict[str, str], known: KnownNames | None = None) -> list[str]:
    """Every problem `load_rules` finds, as `file:line:col: message` relative to tmp_path."""
    files = {"teams.yaml": TEAMS, **files}
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path, known=known)
    return [str(issue).replace(f"{tmp_path}/", "") for issue in caught.value.issues]


def rule(text: str) -> dict[str, str]:
    return {"routing.yaml": "rules:\n" + textwrap.indent(textwrap.dedent(text), "  ")}


def test_yaml_syntax_error_names_the_position(tmp_path: Path) -> None:
    found = problems(tmp_path, {"routing.yaml": "rules:\n  - name: x\n    then: {queue: [a}\n"})
    assert len(found) == 1
    assert found[0].startswith("routing.yaml:3:21: invalid YAML:")


def test_a_key_given_twice(tmp_path: Path) -> None:
    found = problems(tmp_path, rule("- name: a\n  then: {queue: x}\n  name: b\n"))
    assert found == ["routing.yaml:4:5: key 'name' is given twice in this mapping"]


def test_unknown_keys_suggest_the_right_one(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        rule(
            """\
            - name: typo
              when: {subject: {contans: invoice}}
              then: {queue: billing}
              stpo: true
            """
        ),
    )
    assert found == [
        "routing.yaml:3:22: unknown key 'contans' (did you mean 'contains'?)",
        "routing.yaml:5:5: unknown key 'stpo' (did you mean 'stop'?)",
    ]


def test_unknown_condition_and_action(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        rule(
            """\
            - name: typo
              when: {subjet: invoice}
              then: {queu: billing, priorty: high}
            """
        ),
    )
    assert found == [
        "routing.yaml:3:12: unknown condition 'subjet' (did you mean 'subject'?)",
        "routing.yaml:4:12: unknown action 'queu' (did you mean 'queue'?)",
        "routing.yaml:4:27: unknown action 'priorty' (did you mean 'priority'?)",
    ]


def test_wrong_types_and_values(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        rule(
            """\
            - name: types
              when: {class: bounced, attachment_count: {min: many}}
              then: {priority: hihg, type: incidnet, tier: 4, status: done, tags: {add: {a: b}}}
              stop: sometimes
              on: [later]
            """
        ),
    )
    assert found == [
        "routing.yaml:3:19: unknown class 'bounced' (did you mean 'bounce'?)",
        "routing.yaml:3:52: min: Input should be a valid integer,"
        " unable to parse string as an integer",
        "routing.yaml:4:22: unknown priority 'hihg' (did you mean 'high'?)",
        "routing.yaml:4:34: unknown ticket type 'incidnet' (did you mean 'incident'?)",
        "routing.yaml:4:50: `tier` takes 1, 2 or 3",
        "routing.yaml:4:61: unknown status 'done' (expected one of: closed, new, open,"
        " pending, resolved)",
        "routing.yaml:4:79: add: Input should be a valid list",
        "routing.yaml:5:11: stop: Input should be a valid boolean, unable to interpret input",
        "routing.yaml:6:10: on: Input should be 'new' or 'reply'",
    ]


def test_invalid_regex_names_the_position_in_the_pattern(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        rule(
            """\
            - name: broken regex
              when:
                subject: {regex: '(?i)\\b(invoice|számla'}
              then: {queue: billing}
            """
        ),
    )
    assert found == [
        "routing.yaml:4:24: invalid regex '(?i)\\b(invoice|számla':"
        " missing ), unterminated subpattern at position 6"
    ]


def test_references_to_unknown_teams_and_agents(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        rule(
            """\
            - name: refs
              then:
                team: netwrok
                assign: {agent: davdi@example.com}
                notify: {teams: [finanse], agents: [nobody@example.com], template: t}
            """
        ),
    )
    assert found == [
        "routing.yaml:4:13: unknown team 'netwrok' (did you mean 'network'?)",
        "routing.yaml:5:23: unknown agent 'davdi@example.com' (did you mean 'david@example.com'?)",
        "routing.yaml:6:24: unknown team 'finanse' (did you mean 'finance'?)",
        "routing.yaml:6:43: unknown agent 'nobody@example.com'",
    ]


def test_assignments_must_be_possible(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        rule(
            """\
            - name: inactive
              then: {assign: old@example.com}
            - name: no such skill
              then: {assign: {team: network, skill: dns}}
            - name: agent with a method
              then: {assign: {agent: david@example.com, by: least_loaded}}
            """
        ),
    )
    assert found == [
        "routing.yaml:3:20: agent 'old@example.com' is not active",
        "routing.yaml:5:20: team 'network' has no active member with skill 'dns'",
        "routing.yaml:7:51: `by` applies to assigning within a team",
    ]


def test_duplicate_rule_names_across_files(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {
            "10-billing.yaml": "rules:\n  - {name: billing, then: {queue: a}}\n",
            "20-more.yaml": "rules:\n  - {name: other, then: {queue: b}}\n"
            "  - {name: billing, then: {queue: c}}\n",
        },
    )
    assert found == ["20-more.yaml:3:12: rule 'billing' is already defined at 10-billing.yaml:2"]


def test_templates_and_sla_policies_are_checked_when_known(tmp_path: Path) -> None:
    files = rule(
        """\
        - name: refs
          then:
            sla: gold
            auto_reply: requester/welcome
            notify: {agents: [david@example.com], template: agent/vip}
        """
    )
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "teams.yaml").write_text(TEAMS, encoding="utf-8")
    load_rules(tmp_path)  # not known yet: any name is accepted
    known = KnownNames(
        templates=frozenset({"requester/welcome", "agent/vip_ticket"}),
        sla_policies=frozenset({"standard", "premium"}),
    )
    assert problems(tmp_path, files, known) == [
        "routing.yaml:4:12: unknown SLA policy 'gold' (expected one of: premium, standard)",
        "routing.yaml:6:55: unknown template 'agent/vip' (did you mean 'agent/vip_ticket'?)",
    ]


def test_addresses_and_domains_must_look_right(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        rule(
            """\
            - name: addresses
              when: {any: [{to: billing}, {from_domain: '@bigcorp.example'}]}
              then: {queue: x}
            """
        ),
    )
    assert found == [
        "routing.yaml:3:23: 'billing' is not a mail address (use `ends_with` or `glob` for parts)",
        "routing.yaml:3:47: '@bigcorp.example' is not a domain (write it without '@')",
    ]


def test_conditions_and_rules_that_say_nothing(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        rule(
            """\
            - name: empty
              when: {subject: {}}
              then: {}
            - name: empty needle
              when: {body: {contains: ''}}
              then: {queue: x}
            - name: empty all
              when: {all: []}
              then: {queue: x}
            """
        ),
    )
    assert found == [
        "routing.yaml:2:5: rule 'empty' does nothing: give it `then` actions or `stop: true`",
        "routing.yaml:3:21: no operator given (one of: equals, in, contains, starts_with,"
        " ends_with, glob, regex, exists)",
        "routing.yaml:6:29: contains: String should have at least 1 character",
        "routing.yaml:9:17: `all` takes a non-empty list of conditions",
    ]


def test_teams_file_problems(tmp_path: Path) -> None:
    teams = """\
        teams:
          - {name: network, tier: high}
          - {name: network, tier: 1, members: [david@example.com, ghost@example.com]}
        agents:
          - {address: david@example.com, teams: [netwrk]}
          - {address: not-an-address, languages: [english]}
          - {address: David@example.com}
        rules: []
        """
    found = problems(tmp_path, {"teams.yaml": teams, "routing.yaml": "rules: []\n"})
    assert found == [
        "teams.yaml:2:27: tier: Input should be 1, 2 or 3",
        "teams.yaml:3:12: team 'network' is listed twice",
        "teams.yaml:3:59: unknown agent 'ghost@example.com'",
        "teams.yaml:5:42: unknown team 'netwrk' (did you mean 'network'?)",
        "teams.yaml:6:15: address: 'not-an-address' is not a mail address",
        "teams.yaml:6:43: languages: 'english' is not an ISO 639 language code (like en, de, hu)",
        "teams.yaml:7:15: agent david@example.com is listed twice",
        "teams.yaml:8:1: rules belong in a routing file (like routing.yaml), not in teams.yaml",
    ]


def test_misplaced_sections_and_stray_files(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {
            "routing.yaml": "teams: []\nrule: []\n",
            "extra.yml": "rules: []\n",
            ".#routing.yaml": "editor lock file: never read\n",
        },
    )
    assert found == [
        "extra.yml:1:1: not read: rule files end in .yaml",
        "routing.yaml:1:1: `teams` belong in teams.yaml",
        "routing.yaml:2:1: unknown key 'rule' (did you mean 'rules'?)",
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        {
            "a.yaml": "rules:\n  - {name: a, when: {subjet: x}, then: {queue: q}}\n",
            "b.yaml": "rules:\n  - {name: b, when: {subject: {regex: '('}}, then: {team: nope}}\n",
        },
    )
    assert [line.split(":")[0] for line in found] == ["a.yaml", "b.yaml", "b.yaml"]


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_bytes(b"rules:\n  - {name: sz\xe1mla, then: {queue: q}}\n")
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}/routing.yaml:2:14: not UTF-8 text: invalid continuation byte"
    )


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path / "nowhere")
    assert str(caught.value) == f"{tmp_path}/nowhere: not a directory"


def test_yaml_one_point_two_scalars(tmp_path: Path) -> None:
    """`on`, `yes` and `no` are text, as in YAML 1.2: `on: [reply]` is not `True: [...]`,
    and Norwegian (`no`) is a language."""
    teams = TEAMS.replace("skills: [vpn]", "skills: [vpn], languages: [no, en]")
    (tmp_path / "teams.yaml").write_text(teams, encoding="utf-8")
    routing = "rules:\n  - {name: r, on: [reply], then: {tags: [yes]}}\n"
    (tmp_path / "routing.yaml").write_text(routing, encoding="utf-8")
    rules = load_rules(tmp_path)
    assert rules.directory.agents["david@example.com"].languages == {"no", "en"}
    assert rules.rules[0].on == {"reply"}


def test_registering_a_name_twice_fails() -> None:
    registry: Registry[int] = Registry("thing", reserved=["all"])
    registry.add("one", 1)
    with pytest.raises(DuplicateName):
        registry.add("one", 2)
    with pytest.raises(DuplicateName):
        registry.add("all", 3)
    with pytest.raises(DuplicateName):
        CONDITIONS.register("subject")(lambda arg, path, ctx: None)
    assert registry.unknown("oen") == "unknown thing 'oen' (did you mean 'one'?)"


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    """Shared actions can be written once with an anchor and merged with `<<`."""
    (tmp_path / "teams.yaml").write_text(TEAMS, encoding="utf-8")
    routing = """\
rules:
  - name: billing
    when: {subject: {contains: invoice}}
    then: &finance {team: finance, priority: high, tags: [money]}
  - name: refunds
    when: {subject: {contains: refund}}
    then: {<<: *finance, priority: urgent}
"""
    (tmp_path / "routing.yaml").write_text(routing, encoding="utf-8")
    refunds = load_rules(tmp_path).rules[1]
    assert refunds.described == ("priority = urgent", "team = finance", "tags += money")


def test_a_rule_must_run_on_something(tmp_path: Path) -> None:
    assert problems(tmp_path, rule("- {name: never, on: [], then: {queue: x}}\n")) == [
        "routing.yaml:2:23: on: List should have at least 1 item after validation, not 0"
    ]
