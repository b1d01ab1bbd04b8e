"""Loading a rules directory, and reloading it while running: a broken change keeps the
last good rules in force; a good one is swapped in whole."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from maild.rules import RuleError, RuleHolder, load_rules
from maild.rules.cli import check
from maild.types import Address, Envelope, MailClass, ParsedMail

REPO = Path(__file__).resolve().parents[1]

TEAMS = (
    "teams:\n  - {name: finance, tier: 1, members: [fanni@example.com]}\nagents:\n"
    "  - {address: fanni@example.com}\n"
)
BILLING_V1 = (
    "rules:\n  - {name: billing, when: {subject: {contains: invoice}}, then: {queue: billing}}\n"
)
BILLING_V2 = (
    "rules:\n  - {name: billing, when: {subject: {contains: invoice}}, then: {queue: money}}\n"
)
BROKEN = "rules:\n  - {name: billing, when: {subjcet: invoice}, then: {queue: money}}\n"


def invoice_mail() -> ParsedMail:
    return ParsedMail(
        message_id="<i@customer.example>",
        synthetic_message_id=False,
        body_hash="",
        in_reply_to=(),
        references=(),
        from_=Address("alice@customer.example", "Alice"),
        to=(Address("support@example.com"),),
        cc=(),
        reply_to=(),
        subject="Invoice 42 is wrong",
        date=None,
        text="",
        text_stripped="",
        html=None,
        attachments=(),
    )


def queue_of(holder: RuleHolder) -> str | None:
    decision = holder.current.route(
        invoice_mail(), Envelope(), mail_class=MailClass.HUMAN, is_reply=False
    )
    return decision.queue


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    (tmp_path / "teams.yaml").write_text(TEAMS, encoding="utf-8")
    (tmp_path / "routing.yaml").write_text(BILLING_V1, encoding="utf-8")
    return tmp_path


def test_reload_with_a_broken_file_keeps_the_last_good_rules(
    rules_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = RuleHolder.load(rules_dir)
    good = holder.current
    (rules_dir / "routing.yaml").write_text(BROKEN, encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger="maild.rules"):
        result = holder.reload()
    assert not result.ok
    assert [str(i) for i in result.issues] == [
        f"{rules_dir}/routing.yaml:2:28: unknown condition 'subjcet' (did you mean 'subject'?)"
    ]
    assert holder.current is good
    assert queue_of(holder) == "billing"  # the next mail still gets the last good rules
    assert holder.failed_reloads == 1
    assert holder.last_issues == result.issues
    assert "rules reload failed" in caplog.text

    holder.reload()
    assert holder.failed_reloads == 2


def test_reload_with_a_good_file_swaps_the_new_rules_in(rules_dir: Path) -> None:
    holder = RuleHolder.load(rules_dir)
    (rules_dir / "routing.yaml").write_text(BROKEN, encoding="utf-8")
    assert not holder.reload().ok
    (rules_dir / "routing.yaml").write_text(BILLING_V2, encoding="utf-8")
    result = holder.reload()
    assert result.ok
    assert result.issues == ()
    assert queue_of(holder) == "money"
    assert holder.failed_reloads == 1  # a counter: it does not go back
    assert holder.last_issues == ()


def test_a_new_file_and_a_removed_file_are_picked_up(rules_dir: Path) -> None:
    holder = RuleHolder.load(rules_dir)
    (rules_dir / "05-first.yaml").write_text(
        "rules:\n  - {name: early, then: {queue: early}, stop: true}\n", encoding="utf-8"
    )
    assert holder.reload().ok
    assert queue_of(holder) == "early"  # read in name order: 05-first.yaml before routing.yaml
    (rules_dir / "05-first.yaml").unlink()
    assert holder.reload().ok
    assert queue_of(holder) == "billing"


def test_a_broken_teams_file_fails_the_whole_reload(rules_dir: Path) -> None:
    holder = RuleHolder.load(rules_dir)
    (rules_dir / "teams.yaml").write_text("teams:\n  - {name: finance, tier: 9}\n", "utf-8")
    assert not holder.reload().ok
    assert holder.current.directory.teams["finance"].tier == 1


def test_first_load_of_broken_rules_raises(rules_dir: Path) -> None:
    (rules_dir / "routing.yaml").write_text(BROKEN, encoding="utf-8")
    with pytest.raises(RuleError):
        RuleHolder.load(rules_dir)


def test_files_are_read_in_name_order_after_teams(rules_dir: Path) -> None:
    (rules_dir / "10-a.yaml").write_text("rules:\n  - {name: a, then: {queue: a}}\n", "utf-8")
    rules = load_rules(rules_dir)
    assert [Path(f).name for f in rules.files] == ["teams.yaml", "10-a.yaml", "routing.yaml"]
    assert [r.name for r in rules.rules] == ["a", "billing"]


def test_a_directory_without_teams_file(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_text(BILLING_V1, encoding="utf-8")
    assert [r.name for r in load_rules(tmp_path).rules] == ["billing"]


def test_the_shipped_rules_pass_check() -> None:
    code, text = check(REPO / "rules")
    assert code == 0, text
    assert text.endswith("OK: 7 rules in 2 files, 3 teams, 7 agents")


def test_check_prints_every_problem(rules_dir: Path) -> None:
    (rules_dir / "more.yaml").write_text(
        "rules:\n  - {name: x, then: {team: finanse}}\n  - {name: x, then: {tier: 7}}\n", "utf-8"
    )
    code, text = check(rules_dir)
    assert code == 78
    assert text.splitlines() == [
        f"{rules_dir}/more.yaml:2:28: unknown team 'finanse' (did you mean 'finance'?)",
        f"{rules_dir}/more.yaml:3:12: rule 'x' is already defined at {rules_dir}/more.yaml:2",
        f"{rules_dir}/more.yaml:3:28: `tier` takes 1, 2 or 3",
        "3 problems found; nothing was changed",
    ]
