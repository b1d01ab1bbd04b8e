"""Threading on SQLite and PostgreSQL: headers, tags with every prefix, strangers, duplicates."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maild import views
from maild.app import App
from maild.config import TicketSettings
from maild.numbering import Numbering
from maild.pipeline.thread import may_thread, thread, thread_keys
from maild.types import Address, Envelope, ParsedMail, SpoolState
from tests.conftest import deliver, make_mail


def show(app: App, number: str) -> dict[str, Any]:
    with app.db.transaction() as session:
        ticket = views.find_ticket(session, number)
        assert ticket is not None
        return views.ticket_detail(session, ticket, app.numbering)


def ticket_count(app: App) -> int:
    with app.db.transaction() as session:
        return len(views.list_tickets(session, app.numbering))


def test_new_mail_opens_ticket_with_requester(app: App) -> None:
    outcome = deliver(app, make_mail(message_id="<first@customer.example>"))
    assert outcome.state is SpoolState.DONE
    detail = show(app, outcome.ticket_number or "")
    assert detail["requester"] == "alice@customer.example"
    assert detail["status"] == "new"
    assert detail["tag"] == f"[#{outcome.ticket_number}]"
    assert [m["message_id"] for m in detail["messages"]] == ["<first@customer.example>"]
    assert detail["events"][0]["kind"] == "ticket_created"


def test_reply_by_in_reply_to_joins_ticket(app: App) -> None:
    first = deliver(app, make_mail(message_id="<a1@customer.example>"))
    reply = deliver(
        app,
        make_mail(
            sender="someone-else@elsewhere.example",
            subject="completely different subject",
            message_id="<a2@elsewhere.example>",
            in_reply_to="<a1@customer.example>",
        ),
    )
    assert reply.ticket_number == first.ticket_number
    assert show(app, first.ticket_number or "")["message_count"] == 2


def test_reply_by_references_only_joins_ticket(app: App) -> None:
    first = deliver(app, make_mail(message_id="<r1@customer.example>"))
    reply = deliver(
        app,
        make_mail(
            subject="Re: Printer on fire",
            references="<unknown@x.example> <r1@customer.example>",
        ),
    )
    assert reply.ticket_number == first.ticket_number


@pytest.mark.parametrize(
    "prefix", ["Re:", "RE:", "Fwd:", "Fw:", "AW:", "WG:", "SV:", "VS:", "Vá:", "Továbbítás:", ""]
)
def test_tag_reply_with_each_prefix_joins_ticket(app: App, prefix: str) -> None:
    first = deliver(app, make_mail())
    number = first.ticket_number or ""
    reply = deliver(app, make_mail(subject=f"{prefix} [#{number}] Printer on fire".strip()))
    assert reply.ticket_number == number
    assert ticket_count(app) == 1


def test_tag_anywhere_in_subject(app: App) -> None:
    first = deliver(app, make_mail())
    reply = deliver(app, make_mail(subject=f"Printer still burning [#{first.ticket_number}]"))
    assert reply.ticket_number == first.ticket_number


def test_tag_reply_from_stranger_opens_new_ticket_and_notes_both(app: App) -> None:
    first = deliver(app, make_mail())
    number = first.ticket_number or ""
    intruder = deliver(
        app, make_mail(sender="mallory@evil.example", subject=f"Re: [#{number}] Printer on fire")
    )
    assert intruder.state is SpoolState.DONE
    assert intruder.ticket_number != number
    original = show(app, number)
    assert original["message_count"] == 1
    assert any(
        e["kind"] == "stranger_tag_refused" and e["data"]["sender"] == "mallory@evil.example"
        for e in original["events"]
    )
    new = show(app, intruder.ticket_number or "")
    assert any(
        e["kind"] == "stranger_tag" and e["data"]["claimed_ticket"] == number for e in new["events"]
    )


def test_cc_colleague_may_reply_by_tag(app: App) -> None:
    first = deliver(app, make_mail(cc="Bob Colleague <bob@customer.example>"))
    number = first.ticket_number or ""
    reply = deliver(app, make_mail(sender="bob@customer.example", subject=f"Re: [#{number}] x"))
    assert reply.ticket_number == number
    participants = {p["address"] for p in show(app, number)["participants"]}
    assert participants == {"alice@customer.example", "bob@customer.example"}


def test_support_address_is_not_a_participant(app: App) -> None:
    first = deliver(app, make_mail(to="Support <SUPPORT@example.com>"))
    participants = {p["address"] for p in show(app, first.ticket_number or "")["participants"]}
    assert "support@example.com" not in participants


def test_equal_subjects_from_two_customers_make_two_tickets(app: App) -> None:
    one = deliver(app, make_mail(sender="a@one.example", subject="Invoice"))
    two = deliver(app, make_mail(sender="b@two.example", subject="Invoice"))
    assert one.ticket_number != two.ticket_number


def test_duplicate_delivery_is_stored_once(app: App) -> None:
    raw = make_mail(message_id="<dup@customer.example>")
    first = deliver(app, raw)
    again = deliver(app, b"Received: from mx2.example by mx.example\r\n" + raw)
    assert again.state is SpoolState.IGNORED
    assert again.step == "dedupe"
    assert first.ticket_number and first.ticket_number in (again.reason or "")
    assert show(app, first.ticket_number)["message_count"] == 1


def test_same_message_id_with_other_body_is_kept(app: App) -> None:
    first = deliver(app, make_mail(message_id="<same@x.example>", body="one\n"))
    second = deliver(app, make_mail(message_id="<same@x.example>", body="two\n"))
    assert second.state is SpoolState.DONE
    assert first.ticket_number != second.ticket_number


def test_missing_message_id_gets_stable_id_and_dedupes(app: App) -> None:
    raw = make_mail(message_id="")
    assert b"Message-ID" not in raw
    first = deliver(app, raw)
    assert first.state is SpoolState.DONE
    message_id = show(app, first.ticket_number or "")["messages"][0]["message_id"]
    assert message_id.endswith("@maild.invalid>")
    again = deliver(app, raw)
    assert again.state is SpoolState.IGNORED


def test_tag_of_unknown_ticket_opens_new_ticket(app: App) -> None:
    outcome = deliver(app, make_mail(subject="Re: [#99999] lost"))
    assert outcome.state is SpoolState.DONE
    assert outcome.ticket_number != "99999"


def test_customer_reply_reopens_resolved_ticket(app: App) -> None:
    first = deliver(app, make_mail(message_id="<o1@customer.example>"))
    number = first.ticket_number or ""
    from sqlalchemy import update

    from maild.db.models import Ticket

    with app.db.transaction() as session:
        session.execute(update(Ticket).where(Ticket.number == number).values(status="resolved"))
    deliver(app, make_mail(in_reply_to="<o1@customer.example>"))
    detail = show(app, number)
    assert detail["status"] == "open"
    assert detail["events"][-1]["kind"] == "status_changed"


def test_auto_reply_joins_ticket_without_changing_status(app: App) -> None:
    first = deliver(app, make_mail(message_id="<q1@customer.example>"))
    outcome = deliver(
        app,
        make_mail(
            subject="Out of office",
            in_reply_to="<q1@customer.example>",
            headers={"Auto-Submitted": "auto-replied"},
        ),
    )
    assert outcome.ticket_number == first.ticket_number
    detail = show(app, first.ticket_number or "")
    assert detail["status"] == "new"
    assert detail["messages"][-1]["class"] == "auto_reply"


def test_auto_reply_to_nothing_is_ignored_with_reason(app: App) -> None:
    outcome = deliver(app, make_mail(headers={"Auto-Submitted": "auto-replied"}))
    assert outcome.state is SpoolState.IGNORED
    assert "auto_reply" in (outcome.reason or "")
    assert ticket_count(app) == 0


def test_bounce_by_null_sender_to_nothing_is_ignored(app: App) -> None:
    outcome = deliver(app, make_mail(), Envelope(mail_from="", rcpt_to=("support@example.com",)))
    assert outcome.state is SpoolState.IGNORED
    assert "bounce" in (outcome.reason or "")


def test_bulk_mail_is_ticketed(app: App) -> None:
    outcome = deliver(app, make_mail(headers={"List-Id": "<news.lists.example>"}))
    assert outcome.state is SpoolState.DONE
    detail = show(app, outcome.ticket_number or "")
    assert detail["messages"][0]["class"] == "bulk"


def test_mail_from_our_own_address_is_ignored_as_loop(app: App) -> None:
    outcome = deliver(app, make_mail(sender="support@example.com"))
    assert outcome.state is SpoolState.IGNORED
    assert "loop" in (outcome.reason or "")


def test_mail_without_from_is_quarantined(app: App) -> None:
    raw = b"To: support@example.com\r\nSubject: who am I\r\nMessage-ID: <nf@x>\r\n\r\nbody\r\n"
    outcome = deliver(app, raw)
    assert outcome.state is SpoolState.QUARANTINED
    assert outcome.step == "identify"


def test_mail_without_from_uses_envelope_sender(app: App) -> None:
    raw = b"To: support@example.com\r\nSubject: who am I\r\nMessage-ID: <nf2@x>\r\n\r\nbody\r\n"
    outcome = deliver(app, raw, Envelope(mail_from="Bob@Sender.example"))
    assert outcome.state is SpoolState.DONE
    assert show(app, outcome.ticket_number or "")["requester"] == "bob@sender.example"


def test_custom_number_and_tag_format(make_app: Any) -> None:
    app = make_app(
        tickets={"number_format": "{date:%Y}-{seq:05d}", "tag_format": "[Ticket#{number}]"}
    )
    first = deliver(app, make_mail())
    assert first.ticket_number == "2026-00001"
    reply = deliver(app, make_mail(subject="AW: [Ticket#2026-00001] Printer on fire"))
    assert reply.ticket_number == "2026-00001"


def test_a_mail_that_comes_after_its_reply_joins_the_replys_ticket(app: App) -> None:
    """Filed in the wrong order (a bulk import sorted by file name, a relay that held the
    first mail longer): the reply opens the ticket, the mail it answers joins it."""
    reply = deliver(
        app,
        make_mail(
            subject="Re: Printer on fire",
            message_id="<late-2@customer.example>",
            in_reply_to="<late-1@customer.example>",
        ),
    )
    original = deliver(app, make_mail(message_id="<late-1@customer.example>"))
    assert original.ticket_number == reply.ticket_number
    assert ticket_count(app) == 1
    # A chain backwards: the newest reply first, named parents only by References.
    newest = deliver(
        app,
        make_mail(
            message_id="<chain-3@x.example>",
            references="<chain-1@x.example> <chain-2@x.example>",
        ),
    )
    middle = deliver(
        app, make_mail(message_id="<chain-2@x.example>", in_reply_to="<chain-1@x.example>")
    )
    first = deliver(app, make_mail(message_id="<chain-1@x.example>"))
    assert newest.ticket_number == middle.ticket_number == first.ticket_number
    assert ticket_count(app) == 2


def test_a_mail_without_message_id_is_never_taken_for_a_replys_parent(app: App) -> None:
    deliver(app, make_mail(in_reply_to="<someone@x.example>"))
    lone = deliver(app, make_mail(message_id="", subject="no id"))
    assert ticket_count(app) == 2
    assert show(app, lone.ticket_number or "")["message_count"] == 1


def test_replies_to_a_mail_that_is_not_here_share_a_ticket(app: App) -> None:
    """Two replies to the same mail, which has not come (yet): one conversation, which
    the mail joins when it comes."""
    first = deliver(
        app, make_mail(sender="ann@x.example", in_reply_to="<root@x.example>", subject="Re: a")
    )
    second = deliver(
        app,
        make_mail(sender="bob@x.example", references="<root@x.example>", subject="Re: a (as well)"),
    )
    root = deliver(app, make_mail(message_id="<root@x.example>", subject="a"))
    assert first.ticket_number == second.ticket_number == root.ticket_number
    assert ticket_count(app) == 1


class _Index:
    """A ThreadIndex from plain sets, for the property test below."""

    def __init__(
        self,
        stored: dict[str, int],
        numbers: dict[str, int],
        participants: set[tuple[int, str]],
        answering: dict[str, int],
    ) -> None:
        self.stored, self.numbers = stored, numbers
        self.participants, self.answering = participants, answering

    def ticket_for_message_ids(self, message_ids: list[str]) -> int | None:
        return next((self.stored[i] for i in message_ids if i in self.stored), None)

    def ticket_for_number(self, number: str) -> int | None:
        return self.numbers.get(number)

    def is_participant(self, ticket_id: int, address: str) -> bool:
        return (ticket_id, address) in self.participants

    def ticket_answering(self, message_ids: list[str]) -> int | None:
        return next((self.answering[i] for i in message_ids if i in self.answering), None)


_IDS = st.sampled_from([f"<{n}@x.example>" for n in range(6)])
_TICKETS = st.integers(min_value=1, max_value=4)


@settings(max_examples=300, deadline=None)
@given(
    own=_IDS,
    synthetic=st.booleans(),
    in_reply_to=st.lists(_IDS, max_size=2),
    references=st.lists(_IDS, max_size=3),
    tagged=st.lists(_TICKETS, max_size=2),
    stored=st.dictionaries(_IDS, _TICKETS, max_size=3),
    numbers=st.dictionaries(_TICKETS.map(str), _TICKETS, max_size=3),
    participants=st.sets(st.tuples(_TICKETS, st.sampled_from(["a@x.example", "b@x.example"]))),
    answering=st.dictionaries(_IDS, _TICKETS, max_size=3),
)
def test_may_thread_says_yes_whenever_thread_finds_a_ticket(
    own: str,
    synthetic: bool,
    in_reply_to: list[str],
    references: list[str],
    tagged: list[int],
    stored: dict[str, int],
    numbers: dict[str, int],
    participants: set[tuple[int, str]],
    answering: dict[str, int],
) -> None:
    """`maild ingest` files an early auto-reply again only when `may_thread` says so."""
    numbering = Numbering(TicketSettings())
    mail = ParsedMail(
        message_id=own,
        synthetic_message_id=synthetic,
        body_hash="h",
        in_reply_to=tuple(in_reply_to),
        references=tuple(references),
        from_=Address("a@x.example", ""),
        to=(),
        cc=(),
        reply_to=(),
        subject="Re: " + " ".join(numbering.tag(str(n)) for n in tagged),
        date=None,
        text="",
        text_stripped="",
        html=None,
        attachments=(),
    )
    keys = thread_keys(mail, numbering)
    index = _Index(stored, numbers, participants, answering)
    if thread(mail, index, numbering).ticket_id is not None:
        assert may_thread(keys, index)
    assert not may_thread(keys, _Index({}, {}, set(), {}))
