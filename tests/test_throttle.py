"""The per-sender flood throttle, over real SMTP sessions on loopback."""

from __future__ import annotations

import smtplib
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from maild.app import App
from maild.clock import FixedClock
from maild.config import parse_settings
from maild.db.models import SpoolEntry
from maild.receive.throttle import Throttle
from tests.conftest import T0, AppFactory, make_mail
from tests.listener import running_listener


def spooled_from(app: App) -> dict[str, int]:
    with app.db.transaction() as session:
        rows = session.execute(select(SpoolEntry.envelope)).scalars().all()
    counts: dict[str, int] = {}
    for envelope in rows:
        counts[envelope["mail_from"]] = counts.get(envelope["mail_from"], 0) + 1
    return counts


def send(client: smtplib.SMTP, sender: str) -> tuple[int, bytes]:
    """One transaction on an open session; the MAIL FROM reply if it was refused."""
    try:
        client.sendmail(sender, ["support@example.com"], make_mail(sender=sender))
    except smtplib.SMTPSenderRefused as exc:
        client.rset()
        return exc.smtp_code, exc.smtp_error
    return 250, b""


def test_a_flooding_sender_gets_451_and_the_others_do_not(
    make_app: AppFactory, clock: FixedClock
) -> None:
    app = make_app(smtp={"max_mails_per_sender": 5, "throttle_window": 60.0})
    with (
        running_listener(app) as smtp,
        smtplib.SMTP("127.0.0.1", smtp.port, timeout=30) as flood,
        smtplib.SMTP("127.0.0.1", smtp.port, timeout=30) as calm,
    ):
        assert [send(flood, "bomb@flood.example")[0] for _ in range(5)] == [250] * 5
        code, text = send(flood, "BOMB@flood.example")  # the same sender, any case
        assert (code, text) == (451, b"4.7.1 Too many mails from this sender, try again later")
        # Someone else, on the same client address, at the same moment.
        assert [send(calm, "alice@customer.example")[0] for _ in range(5)] == [250] * 5
        # The bucket refills evenly: one more mail every 60 / 5 seconds.
        clock.advance(timedelta(seconds=12))
        assert send(flood, "bomb@flood.example")[0] == 250
        assert send(flood, "bomb@flood.example")[0] == 451
        assert smtp.observed["throttled"] == 2
    assert spooled_from(app) == {"bomb@flood.example": 6, "alice@customer.example": 5}


def test_the_client_limit_counts_every_sender_of_one_address(make_app: AppFactory) -> None:
    app = make_app(smtp={"max_mails_per_sender": 0, "max_mails_per_client": 3})
    with running_listener(app) as smtp:
        with smtplib.SMTP("127.0.0.1", smtp.port, timeout=30) as first:
            assert [send(first, f"s{i}@many.example")[0] for i in range(3)] == [250] * 3
            code, text = send(first, "s9@many.example")
            assert (code, text) == (451, b"4.7.1 Too many mails from your address, try again later")
        # Another client address (all of 127/8 is loopback on Linux) is not affected.
        with smtplib.SMTP(
            "127.0.0.1", smtp.port, timeout=30, source_address=("127.0.0.2", 0)
        ) as other:
            assert send(other, "s9@many.example")[0] == 250
    assert sum(spooled_from(app).values()) == 4


def test_a_flood_in_parallel_does_not_hold_up_another_sender(make_app: AppFactory) -> None:
    """A flooder hammering on its own connection while a customer sends: the customer's
    mails all get through, the flooder gets exactly its quota."""
    app = make_app(smtp={"max_mails_per_sender": 10})
    results: list[int] = []
    with running_listener(app) as smtp:

        def hammer() -> None:
            with smtplib.SMTP("127.0.0.1", smtp.port, timeout=30) as client:
                results.extend(send(client, "bomb@flood.example")[0] for _ in range(60))

        flooder = threading.Thread(target=hammer)
        flooder.start()
        with smtplib.SMTP("127.0.0.1", smtp.port, timeout=30) as calm:
            customer = [send(calm, "alice@customer.example")[0] for _ in range(8)]
        flooder.join(60)
    assert customer == [250] * 8
    assert results.count(250) == 10
    assert results.count(451) == 50
    assert spooled_from(app) == {"bomb@flood.example": 10, "alice@customer.example": 8}


def test_bounces_share_the_null_sender_bucket() -> None:
    clock = FixedClock(T0)
    throttle = Throttle(per_sender=2, per_client=0, window=60.0, clock=clock)
    assert [throttle.admit("", "192.0.2.1") for _ in range(3)] == [None, None, "sender"]
    assert throttle.admit("someone@example.org", "192.0.2.1") is None


def test_a_refused_attempt_costs_nothing() -> None:
    """Hammering while refused does not push the next acceptance further away."""
    clock = FixedClock(T0)
    throttle = Throttle(per_sender=1, per_client=2, window=60.0, clock=clock)
    assert throttle.admit("a@x.example", "192.0.2.1") is None
    assert [throttle.admit("a@x.example", "192.0.2.1") for _ in range(50)] == ["sender"] * 50
    # Neither the sender's refusals nor its client's bucket were charged for them.
    assert throttle.admit("b@x.example", "192.0.2.1") is None
    clock.advance(timedelta(seconds=60))
    assert throttle.admit("a@x.example", "192.0.2.1") is None


def test_memory_is_bounded_by_forgetting_the_least_recently_seen() -> None:
    """Rotating sender addresses cannot grow memory: past `max_keys`, the least recently
    seen sender is forgotten, which is only ever in its favour."""
    clock = FixedClock(T0)
    throttle = Throttle(per_sender=1, per_client=0, window=3600.0, clock=clock, max_keys=2)
    assert throttle.admit("a@x.example", "") is None
    assert throttle.admit("a@x.example", "") == "sender"
    assert throttle.admit("b@x.example", "") is None
    assert throttle.admit("a@x.example", "") == "sender"  # still remembered: 2 keys
    assert throttle.admit("c@x.example", "") is None  # b is the least recently seen
    assert throttle.admit("a@x.example", "") == "sender"  # a is still held back
    assert throttle.admit("b@x.example", "") is None  # b was forgotten: a fresh bucket


def test_throttle_settings_and_defaults() -> None:
    smtp = parse_settings({}, source="<test>").smtp
    assert (smtp.max_mails_per_sender, smtp.max_mails_per_client) == (120, 0)
    with pytest.raises(Exception, match="throttle_window"):
        parse_settings({"smtp": {"throttle_window": 0}}, source="<test>")
