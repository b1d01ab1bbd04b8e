"""Pure parts of outbound mail: the loop guard, templates, composition, backoff."""

from __future__ import annotations

from datetime import timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from jinja2 import UndefinedError

from maild.config import OutboundSettings, parse_settings
from maild.errors import ConfigError
from maild.outbox.compose import compose_reply, sending_address
from maild.outbox.dsn import read_report
from maild.outbox.guard import Guard, RecentMail, Refusal
from maild.outbox.send import SendError, backoff
from maild.pipeline.parse import parse
from maild.templating import Rendered, Templates, sample_context
from maild.types import Envelope, MailClass
from tests.conftest import T0, make_mail

OURS = {"support@example.com", "billing@example.com"}
NONE_RECENT = RecentMail(0, 0)


def guard(**settings: object) -> Guard:
    return Guard(OutboundSettings.model_validate(settings), lambda a: a.lower() in OURS)


def refused(
    recipient: str = "alice@customer.example",
    mail_class: MailClass = MailClass.HUMAN,
    recent: RecentMail = NONE_RECENT,
    headers: dict[str, str] | None = None,
    envelope: Envelope | None = None,
    **settings: object,
) -> Refusal | None:
    mail = parse(make_mail(headers=headers))
    return guard(**settings).refusal(
        mail, mail_class, envelope or Envelope(mail_from=recipient), recipient, recent, T0
    )


def refusal(
    recipient: str = "alice@customer.example",
    mail_class: MailClass = MailClass.HUMAN,
    recent: RecentMail = NONE_RECENT,
    headers: dict[str, str] | None = None,
    envelope: Envelope | None = None,
    **settings: object,
) -> str | None:
    found = refused(recipient, mail_class, recent, headers, envelope, **settings)
    return found.reason if found is not None else None


def test_a_human_within_limits_may_be_answered() -> None:
    assert refusal() is None


@pytest.mark.parametrize("mail_class", [MailClass.AUTO_REPLY, MailClass.BOUNCE, MailClass.BULK])
def test_automatic_classes_are_never_answered(mail_class: MailClass) -> None:
    assert (
        refusal(mail_class=mail_class) == f"{mail_class.value} mail is never answered automatically"
    )


@pytest.mark.parametrize(
    "recipient",
    [
        "mailer-daemon@mx.example",
        "POSTMASTER@example.org",
        "noreply@shop.example",
        "no-reply@shop.example",
        "do_not_reply@bank.example",
        "owner-list@lists.example",
        "list-request@lists.example",
        "bounces@mailer.example",
    ],
)
def test_no_reply_style_senders_are_never_answered(recipient: str) -> None:
    reason = refusal(recipient)
    assert reason is not None and reason.startswith("no-reply sender")


def test_no_reply_patterns_are_configurable() -> None:
    assert refusal("robot@x.example", no_reply_patterns=["^robot$"]) is not None
    assert refusal("noreply@x.example", no_reply_patterns=[]) is None


def test_null_sender_our_addresses_and_loop_header() -> None:
    assert refusal(envelope=Envelope(mail_from="")) == "null sender"
    assert refusal("") == "null sender"
    assert refusal("Billing@example.com") == "our own address Billing@example.com"
    assert refusal(headers={"X-Maild-Loop": "other-instance"}) == (
        "carries X-Maild-Loop: other-instance"
    )


def test_rate_limits_per_hour_and_per_day() -> None:
    assert refusal(recent=RecentMail(4, 4)) is None
    hourly = refusal(recent=RecentMail(5, 5))
    assert hourly is not None and "in an hour" in hourly
    daily = refusal(recent=RecentMail(0, 20))
    assert daily is not None and "in a day" in daily
    assert refusal(recent=RecentMail(9, 9), max_per_hour=10, max_per_day=10) is None


def test_per_ticket_limit_and_bouncing_address() -> None:
    ticket = refused(recent=RecentMail(0, 0, ticket_last_day=3), max_per_ticket=3)
    assert ticket is not None and ticket.code == "rate_ticket"
    assert refused(recent=RecentMail(0, 0, ticket_last_day=2), max_per_ticket=3) is None
    bouncing = refused(recent=RecentMail(0, 0, bouncing_until=T0 + timedelta(seconds=1)))
    assert bouncing is not None and bouncing.code == "bouncing"
    # Once the suppression has run out, the address is answered again.
    assert refused(recent=RecentMail(0, 0, bouncing_until=T0)) is None


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"mail_class": MailClass.AUTO_REPLY}, "auto_reply"),
        ({"mail_class": MailClass.BOUNCE}, "bounce"),
        ({"mail_class": MailClass.BULK}, "bulk"),
        ({"envelope": Envelope(mail_from="")}, "null_sender"),
        ({"recipient": "noreply@shop.example"}, "no_reply"),
        ({"recipient": "support@example.com"}, "own_address"),
        ({"headers": {"X-Maild-Loop": "maild"}}, "loop_header"),
        ({"recent": RecentMail(5, 5)}, "rate_recipient"),
    ],
)
def test_every_refusal_names_its_rule_for_the_metric(kwargs: dict[str, Any], code: str) -> None:
    found = refused(**kwargs)
    assert found is not None and found.code == code


def test_bad_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"outbound\.no_reply_patterns"):
        parse_settings({"outbound": {"no_reply_patterns": ["(unclosed"]}}, "<test>")


@pytest.mark.parametrize(
    ("error", "dead"),
    [
        (SendError("550 5.1.1 no such user", permanent=True, code=550), True),
        (SendError("552 5.2.2 mailbox full", permanent=True, code=552), True),
        (SendError("550 unknown", permanent=True, code=550, recipient_refused=True), True),
        # Our relay's policy or config, not the customer's address.
        (SendError("554 5.7.1 relay access denied", permanent=True, code=554), False),
        (SendError("550 rejected", permanent=True, code=550), False),
        (SendError("450 4.2.1 try later", permanent=False, code=450), False),
    ],
)
def test_only_a_refused_address_counts_as_a_dead_one(error: SendError, dead: bool) -> None:
    assert error.dead_address is dead


def test_backoff_doubles_up_to_the_cap() -> None:
    settings = OutboundSettings(retry_base=60, retry_max=600)
    assert [backoff(n, settings).total_seconds() for n in range(1, 7)] == [
        60,
        120,
        240,
        480,
        600,
        600,
    ]


def test_packaged_templates_check_clean_and_render_both_languages() -> None:
    templates = Templates(None)
    # Every packaged template, whoever's, is checked in tests/test_templates.py.
    assert [p for p in templates.check() if p.startswith("requester/")] == []
    assert ("requester/ticket_created", None) in templates.names()
    assert ("requester/ticket_created", "hu") in templates.names()
    english = templates.render("requester/ticket_created", sample_context())
    hungarian = templates.render("requester/ticket_created", sample_context(), "hu")
    assert english.language == "en" and "ticket 1042" in english.text
    assert hungarian.language == "hu" and "1042 számon" in hungarian.text
    # An unknown language falls back to the default.
    assert templates.render("requester/ticket_created", sample_context(), "xx").language == "en"


def test_undefined_variable_is_an_error_not_a_blank(tmp_path: Path) -> None:
    (tmp_path / "requester").mkdir()
    (tmp_path / "requester" / "ticket_created.txt.j2").write_text(
        "Hello {{ requester.name }},\n{{ ticket.colour }}\n"
    )
    templates = Templates(tmp_path)
    problems = [p for p in templates.check() if p.startswith("requester/ticket_created")]
    assert problems == ["requester/ticket_created.txt.j2: 'dict object' has no attribute 'colour'"]
    with pytest.raises(UndefinedError):
        templates.render("requester/ticket_created", sample_context())


def test_operator_file_overrides_the_packaged_one(tmp_path: Path) -> None:
    (tmp_path / "requester").mkdir()
    (tmp_path / "requester" / "ticket_created.txt.j2").write_text("Ours: {{ ticket.tag }}\n")
    rendered = Templates(tmp_path).render("requester/ticket_created", sample_context())
    assert rendered.text == "Ours: [#1042]\n"
    # The parts the operator did not override still come from the package.
    assert rendered.subject == "Re: Printer on fire" and rendered.html is not None


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "new_ticket.subject.j2").write_text("New ticket\n")
    (tmp_path / "agent" / "new_ticket.txt.j2").write_text("one\n{% if %}\n")
    problems = [p for p in Templates(tmp_path).check() if p.startswith("agent/new_ticket")]
    assert len(problems) == 1 and problems[0].startswith("agent/new_ticket.txt.j2:2: ")


def test_html_autoescapes_customer_text_and_text_does_not() -> None:
    context = sample_context()
    context["ticket"] = {**context["ticket"], "subject": "<script>x()</script> & co"}
    rendered = Templates(None).render("requester/ticket_created", context)
    assert rendered.html is not None
    assert "&lt;script&gt;x()&lt;/script&gt; &amp; co" in rendered.html
    assert "<script>" not in rendered.html
    assert "<script>x()</script> & co" in rendered.text


def test_composed_reply_headers() -> None:
    composed = compose_reply(
        Rendered("Re: Hi", "text\n", "<p>html</p>\n", "en"),
        subject="Re: Hi [#7]",
        sender="support@example.com",
        recipient=("alice@customer.example", "Álice Ü"),
        parent_message_id="<p@c.example>",
        parent_references=("<root@c.example>", "<p@c.example>"),
        message_id="<m@example.com>",
        instance_id="maild-a",
        now=T0,
    )
    mail = message_from_bytes(composed.raw, policy=default)
    assert b"\r\n" in composed.raw
    assert mail["References"] == "<root@c.example> <p@c.example>"
    assert mail["In-Reply-To"] == "<p@c.example>"
    assert str(mail["To"]) == "Álice Ü <alice@customer.example>"
    assert mail["Date"] == "Mon, 02 Mar 2026 09:00:00 +0000"
    assert mail.get_content_type() == "multipart/alternative"
    assert composed.references == ("<root@c.example>", "<p@c.example>")


def test_sending_address_is_the_one_the_mail_came_in_on() -> None:
    settings = parse_settings(
        {"mail": {"support_addresses": ["help@example.com"], "support_domains": ["corp.example"]}},
        "<test>",
    )
    assert sending_address(
        settings, Envelope(rcpt_to=("x@other.example", "Sales@Corp.example"))
    ) == ("sales@corp.example")
    assert sending_address(settings, Envelope()) == "help@example.com"


def test_sending_address_never_shows_a_sub_address_or_the_internal_address() -> None:
    settings = parse_settings(
        {
            "mail": {"support_addresses": ["help@example.com"]},
            "agents": {"internal_address": "help-comment@example.com"},
        },
        "<test>",
    )
    signed = Envelope(rcpt_to=("help+t7.a1b2c3d4.k1.00ff00ff00ff00ff@example.com",))
    assert sending_address(settings, signed) == "help@example.com"
    internal = Envelope(rcpt_to=("help-comment@example.com",))
    assert sending_address(settings, internal) == "help@example.com"


def test_bounce_report_from_a_quoted_original() -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example\r\nSubject: failure notice\r\n"
        b"Message-ID: <dsn@mx.example>\r\n\r\n"
        b"Sorry, I couldn't deliver.\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n"
        b"From: support@example.com\r\nMessage-ID: <ours@example.com>\r\nSubject: Re: x\r\n"
    )
    report = read_report(raw)
    assert report.original_message_ids == ("<ours@example.com>",)
    assert report.status is None


def test_a_delivery_report_is_read_when_the_mail_is_parsed() -> None:
    dsn = (
        b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered Mail\r\n"
        b"Message-ID: <dsn2@mx.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example\r\n\r\n"
        b"Final-Recipient: rfc822; gone@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"Message-ID: <ours2@example.com>\r\nSubject: Re: x\r\n"
        b"--b--\r\n"
    )
    report = parse(dsn).bounce_report
    assert report == read_report(dsn)
    assert report is not None and report.original_message_ids == ("<ours2@example.com>",)
    assert (report.recipient, report.status) == ("gone@customer.example", "5.1.1")
    # A read receipt is a report too, but not about a delivery: nothing is read ahead.
    receipt = dsn.replace(b"report-type=delivery-status", b"report-type=disposition-notification")
    assert parse(receipt).bounce_report is None
