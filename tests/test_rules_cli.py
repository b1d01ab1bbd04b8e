"""`maild rules test`: a mail through the rules without a database, showing why it went
where it went; on our own mails and on the shared real-world corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from maild.cli import main
from maild.errors import Quarantine
from maild.pipeline.classify import classify
from maild.pipeline.parse import parse
from maild.rules import load_rules, matchers
from maild.rules.cli import test as rules_test
from maild.types import Envelope
from tests.conftest import CORPUS_DEV, make_mail, need_corpus

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "rules"
DATA = REPO / "tests" / "data" / "rules"
CORPUS = CORPUS_DEV


def corpus_file(relative: str) -> bytes:
    path = CORPUS / relative
    need_corpus(path)
    return path.read_bytes()


def as_json(raw: bytes, rules_dir: Path = SHIPPED, *, as_reply: bool = False) -> dict[str, Any]:
    result = json.loads(rules_test(raw, rules_dir, as_reply=as_reply, as_json=True))
    assert isinstance(result, dict)
    return result


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {rule["name"]: rule["status"] for rule in result["rules"]}


def test_text_output_shows_rules_conditions_actions_and_ticket() -> None:
    text = rules_test((DATA / "invoice-in-hungarian.eml").read_bytes(), SHIPPED)
    lines = text.splitlines()
    assert lines[0] == "mail <invoice-in-hungarian@test.example>"
    assert "  subject:     'Hibás számla (2026/113)'" in lines
    # The line the rule starts on in the shipped file, however its comments grow.
    shipped = (SHIPPED / "routing.yaml").read_text().splitlines()
    line = shipped.index("  - name: billing") + 1
    assert f"3. billing  ({SHIPPED}/routing.yaml:{line})  FIRED, stop" in lines
    assert (
        "      ✓ subject regex '(?i)\\b(invoice|számla|rechnung)\\b'"
        "  (seen: 'számla' in 'Hibás számla (2026/113)')"
    ) in lines
    assert (
        "      ✗ recipient in ['billing@example.com', 'szamla@example.com']"
        "  (seen: 'support@example.com')"
    ) in lines
    assert "   → tags += billing" in lines
    assert any(line.endswith("not reached: an earlier rule stopped") for line in lines)
    ticket = lines[lines.index("ticket:") + 1 :]
    assert "  queue:        billing" in ticket
    assert "  team:         finance" in ticket
    assert "  tier:         1" in ticket
    assert "  priority:     normal" in ticket
    assert "  assign:       a member of team finance by round_robin (chosen at delivery)" in ticket
    assert lines[-1] == "fired: first line by default, billing"


def test_json_output_agrees_with_routing() -> None:
    raw = (DATA / "outage-from-vip.eml").read_bytes()
    result = as_json(raw)
    assert statuses(result) == {
        "executable attachments go to quarantine": "not matched",
        "first line by default": "fired",
        "billing": "not matched",
        "outages are incidents for the network team": "fired",
        "password resets": "not matched",
        "VIP customers": "fired",
        "mail from agents": "not matched",
    }
    outage = result["rules"][3]
    assert outage["condition"]["kind"] == "any"
    assert [c["matched"] for c in outage["condition"]["conditions"]] == [True, True]
    assert outage["condition"]["conditions"][1]["seen"] == (
        "'is down' in 'Hello, our site VPN is down since this morning; nobo…'"
    )
    assert result["ticket"]["priority"] == "urgent"
    assert result["ticket"]["type"] == "incident"
    assert result["ticket"]["team"] == "network"
    assert result["ticket"]["tier"] == 2
    assert result["ticket"]["tags"] == ["outage", "vip"]

    mail = parse(raw)
    rules = load_rules(SHIPPED)
    decision = rules.route(mail, Envelope(), mail_class=classify(mail, Envelope()), is_reply=False)
    assert result["decision"] == json.loads(json.dumps(decision.as_dict()))


def test_as_reply_runs_the_follow_up_rules() -> None:
    result = as_json((DATA / "outage-from-vip.eml").read_bytes(), as_reply=True)
    fired = [name for name, status in statuses(result).items() if status == "fired"]
    assert fired == ["VIP customers"]
    assert statuses(result)["billing"] == "skipped"
    assert result["phase"] == "reply"
    assert result["ticket"]["priority"] == "urgent"
    assert result["ticket"]["status"] is None  # a follow-up does not reset the status


def test_executable_attachment_is_quarantined() -> None:
    result = as_json((DATA / "executable-attachment.eml").read_bytes())
    assert result["ticket"]["outcome"] == "quarantine: executable attachment"
    quarantine = result["rules"][0]
    assert quarantine["status"] == "fired"
    assert quarantine["condition"]["seen"].startswith("'documents.pdf.exe'")
    assert [r["status"] for r in result["rules"][1:]] == ["not reached"] * 6


def test_mail_from_an_agent() -> None:
    result = as_json((DATA / "agent-forward.eml").read_bytes())
    assert result["mail"]["sender_is"] == "agent"
    assert result["ticket"]["tags"] == ["internal"]
    assert result["ticket"]["auto_reply"] == "none"


# ---------------------------------------------------------------- the shared corpus


@pytest.mark.parametrize(
    "relative", ["zammad/mail026.box", "zammad/mail057.box"], ids=["Rechnung", "Invoice"]
)
def test_corpus_invoices_go_to_billing(relative: str) -> None:
    result = as_json(corpus_file(relative))
    assert statuses(result)["billing"] == "fired"
    assert result["ticket"]["queue"] == "billing"
    assert result["decision"]["fired"][-1]["matched"][0]["condition"].startswith("subject regex")


CORPUS_RULES = """\
rules:
  - name: pdf attachments
    when: {attachment: {name: {glob: '*.pdf'}, content_type: application/pdf}}
    then: {tags: [pdf]}
  - name: bounces
    when: {class: bounce}
    then: {queue: bounces}
  - name: big mail
    when: {attachment: {size: {min: 1KB}}}
    then: {tags: [big]}
"""


def test_corpus_attachment_and_bounce_conditions(tmp_path: Path) -> None:
    (tmp_path / "routing.yaml").write_text(CORPUS_RULES, encoding="utf-8")
    pdf = as_json(corpus_file("mikel-mail/attachment_emails/attachment_pdf.eml"), tmp_path)
    assert statuses(pdf)["pdf attachments"] == "fired"
    assert pdf["ticket"]["tags"] == ["pdf", "big"]
    bounce = as_json(corpus_file("sisimai/lhost-postfix-01.eml"), tmp_path)
    assert bounce["mail"]["mail_class"] == "bounce"
    assert statuses(bounce)["bounces"] == "fired"


def test_every_corpus_mail_can_be_explained() -> None:
    """Every mail of the shared corpus goes through `rules test` in text and JSON, and the
    explanation's decision is the one fast routing makes."""
    corpus_file("MANIFEST.tsv")
    rules = load_rules(SHIPPED)
    paths = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".eml", ".box"))
    assert len(paths) > 200
    for path in paths:
        raw = path.read_bytes()
        try:
            mail = parse(raw)
        except Quarantine:
            # Not a mail at all (the parse step says why); `rules test` says the same.
            with pytest.raises(Quarantine):
                rules_test(raw, SHIPPED)
            continue
        assert rules_test(raw, SHIPPED).startswith("mail ")
        for as_reply in (False, True):
            result = json.loads(rules_test(raw, SHIPPED, as_reply=as_reply, as_json=True))
            decision = rules.route(
                mail, Envelope(), mail_class=classify(mail, Envelope()), is_reply=as_reply
            )
            assert result["decision"] == json.loads(json.dumps(decision.as_dict())), path


def test_the_command_parses_with_the_configured_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mail the daemon would quarantine for a limit is not routed by `rules test` either."""
    mail = tmp_path / "mail.eml"
    mail.write_bytes(make_mail())
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nrules = "{SHIPPED}"\n[mail]\nmax_header_fields = 3\n')

    code = main(["rules", "test", "--config", str(config), str(mail)])

    assert code == 65  # EX_DATAERR: not a mail maild would take
    assert "max_header_fields" in capsys.readouterr().err


def test_a_regex_out_of_time_says_the_mail_would_be_quarantined(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matchers, "REGEX_SECONDS", 0.1)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "routing.yaml").write_text(
        "rules:\n  - {name: greedy, when: {subject: {regex: '(a|aa)+$'}}, then: {queue: a}}\n"
    )
    mail = tmp_path / "mail.eml"
    mail.write_bytes(make_mail(subject="a" * 40 + "b"))
    config = tmp_path / "config.toml"
    config.write_text(f'[paths]\nrules = "{rules}"\n')

    code = main(["rules", "test", "--config", str(config), str(mail)])

    assert code == 65
    assert "would be quarantined: timeout: regex '(a|aa)+$'" in capsys.readouterr().err
