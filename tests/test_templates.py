"""`maild templates check|render`, and the documented context against the real one."""

from __future__ import annotations

import io
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message as EmailMessage
from email.policy import default
from pathlib import Path

import pytest

from maild.cli import EX_DATAERR, EX_NOINPUT, EX_OK, main
from maild.templating import Templates, sample_context
from tests.conftest import AppFactory, deliver, make_mail
from tests.test_outbox import NO_RULES, SUPPORT, Sink, sender, to_support


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink().start()
    yield server
    server.stop()


def config(tmp_path: Path, db_url: str | None = None, templates: Path | None = None) -> Path:
    path = tmp_path / "config.toml"
    lines = [f'[database]\nurl = "{db_url}"'] if db_url else []
    lines.append(f'[paths]\nrules = "{NO_RULES["rules"]}"')
    if templates is not None:
        lines[-1] += f'\ntemplates = "{templates}"'
    lines.append('[mail]\nsupport_addresses = ["support@example.com", "billing@example.com"]')
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


def as_mail(printed: str) -> EmailMessage:
    return message_from_bytes(printed.replace("\n", "\r\n").encode(), policy=default)


def test_every_packaged_template_checks_clean_against_its_sample_context() -> None:
    templates = Templates(None)
    assert ("requester/ticket_created", "hu") in templates.names()
    assert templates.check() == []


def test_check_names_every_broken_operator_file(tmp_path: Path) -> None:
    operator = tmp_path / "templates"
    (operator / "requester").mkdir(parents=True)
    (operator / "requester" / "ticket_created.hu.txt.j2").write_text("{{ ticket.colour }}\n")
    (operator / "requester" / "custom.subject.j2").write_text("Hi\n")
    (operator / "requester" / "custom.txt.j2").write_text("{% for %}\n")
    code, _ = run("templates", "check", "--config", str(config(tmp_path, templates=operator)))
    assert code == EX_DATAERR
    code, printed = run("templates", "check", "--config", str(config(tmp_path)))
    assert code == EX_OK and "templates render cleanly" in printed


def test_check_reports_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    operator = tmp_path / "templates"
    (operator / "requester").mkdir(parents=True)
    (operator / "requester" / "custom.subject.j2").write_text("Hi\n")
    (operator / "requester" / "custom.txt.j2").write_text("fine\n{% for %}\n")
    code, _ = run("templates", "check", "--config", str(config(tmp_path, templates=operator)))
    assert code == EX_DATAERR
    assert "requester/custom.txt.j2:2: " in capsys.readouterr().err


def test_render_prints_the_mail_as_it_would_be_sent(tmp_path: Path) -> None:
    code, printed = run(
        "templates", "render", "requester/ticket_created", "--lang", "hu",
        "--config", str(config(tmp_path)),
    )  # fmt: skip
    assert code == EX_OK
    mail = as_mail(printed)
    assert mail["Subject"] == "Re: Printer on fire [#1042]"
    assert mail["From"] == SUPPORT and mail["Reply-To"] == SUPPORT
    assert mail["In-Reply-To"] == "<a1@customer.example>"
    assert mail["Auto-Submitted"] == "auto-replied" and mail["X-Maild-Loop"] == "maild"
    text = mail.get_body(("plain",))
    assert text is not None and "Köszönjük" in text.get_content()
    # No database is needed (or created) for the sample.
    assert not (tmp_path / "maild.db").exists()


def test_render_with_a_ticket_uses_its_data(
    make_app: AppFactory, db_url: str, tmp_path: Path
) -> None:
    app = make_app(paths=NO_RULES, mail={"support_addresses": [SUPPORT, "billing@example.com"]})
    outcome = deliver(
        app,
        make_mail(subject="<b>Broken</b> invoice", message_id="<inv@customer.example>"),
        to_support("billing@example.com"),
    )
    code, printed = run(
        "templates", "render", "requester/ticket_created",
        "--ticket", str(outcome.ticket_number), "--config", str(config(tmp_path, db_url)),
    )  # fmt: skip
    assert code == EX_OK
    mail = as_mail(printed)
    assert mail["Subject"] == f"Re: <b>Broken</b> invoice [#{outcome.ticket_number}]"
    assert mail["From"] == "billing@example.com"  # the address the mail came in on
    assert mail["To"] == "Alice Customer <alice@customer.example>"
    assert mail["In-Reply-To"] == "<inv@customer.example>"
    html = mail.get_body(("html",))
    assert html is not None and "&lt;b&gt;Broken&lt;/b&gt; invoice" in html.get_content()


def test_render_with_a_ticket_keeps_samples_for_what_a_ticket_cannot_tell(
    make_app: AppFactory, db_url: str, tmp_path: Path
) -> None:
    operator = tmp_path / "templates"
    (operator / "agent").mkdir(parents=True)
    (operator / "agent" / "custom.subject.j2").write_text("For {{ agent.address }}\n")
    (operator / "agent" / "custom.txt.j2").write_text("{{ ticket.subject }}\n")
    app = make_app(paths=NO_RULES)
    outcome = deliver(app, make_mail(subject="Scanner jam"), to_support())
    path = str(config(tmp_path, db_url, templates=operator))
    code, printed = run(
        "templates", "render", "agent/custom", "--ticket", str(outcome.ticket_number),
        "--config", path,
    )  # fmt: skip
    assert code == EX_OK
    mail = as_mail(printed)
    expected_agent = sample_context("agent/custom")["agent"]["address"]
    assert mail["Subject"] == f"For {expected_agent} [#{outcome.ticket_number}]"
    text = mail.get_body(("plain",))
    assert text is not None and text.get_content().strip() == "Scanner jam"


def test_render_unknown_ticket_or_template(tmp_path: Path, db_url: str) -> None:
    path = str(config(tmp_path, db_url))
    missing_template = run("templates", "render", "requester/nothing", "--config", path)
    assert missing_template[0] == EX_NOINPUT
    name = "requester/ticket_created"
    missing_ticket = run("templates", "render", name, "--ticket", "999", "--config", path)
    assert missing_ticket[0] == EX_NOINPUT


def test_the_documented_sample_context_is_what_an_acknowledgement_gets(
    make_app: AppFactory, sink: Sink, tmp_path: Path
) -> None:
    """An operator template printing the keys of every variable renders the same for the
    sample and for a real acknowledgement: the README, the check and the run agree."""
    operator = tmp_path / "templates" / "requester"
    operator.mkdir(parents=True)
    (operator / "ticket_created.txt.j2").write_text(
        "{% for v in [ticket, requester, message] %}{{ v.keys()|sort|join(',') }};{% endfor %}"
        "{{ support_address is string }};{{ language }}\n"
    )
    (operator / "ticket_created.subject.j2").write_text("Hello\n")
    app = make_app(
        outbound={"enabled": True, "port": sink.port},
        paths={**NO_RULES, "templates": str(tmp_path / "templates")},
    )
    deliver(app, make_mail(), to_support())
    sender(app).send_due()
    _, _, ack = sink.next_mail()
    text = ack.get_body(("plain",))
    assert text is not None
    sample = Templates(tmp_path / "templates").render(
        "requester/ticket_created", sample_context("requester/ticket_created")
    )
    assert text.get_content().strip() == sample.text.strip()
    assert sample.text.startswith("assignee,created_at,number,priority,")
