"""Quote stripping on agents' replies: real reply bodies from ../shared/corpus-dev/reply-*
(GitHub's and willdurand's reply-parser fixtures) sent by an agent; the customer gets the
new text only. Parsing, not storage, is under test: SQLite only."""

from __future__ import annotations

from pathlib import Path

import pytest

from maild.types import Envelope, SpoolState
from tests.conftest import CORPUS_DEV, AppFactory, deliver, make_mail, need_corpus
from tests.test_agents import (
    ALICE,
    ANNA,
    agents_app,
    body,
    customer_ticket,
    reply_address,
    sent,
)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'maild.db'}"


# (fixture, a line of the agent's own text, a line of the quoted history)
CASES = [
    ("reply-github/email_1_3.txt", "Oh thanks.", "What is the best way to clear"),
    ("reply-github/email_2_1.txt", "Outlook with a reply", "Dear Google Apps Sync user"),
    ("reply-github/greedy_on.txt", "telnet 127.0.0.1 52698", "I am having an odd issue"),
    ("reply-github/email_bullets.txt", "- how about bullets", "Give us an example"),
    ("reply-willdurand/email_norwegian_gmail.txt", "Fusce bibendum", "Ok. Thanks."),
    ("reply-willdurand/email_zimbra_free_fr.txt", "Le paragraphe qui pose", "BONJOUR TEST"),
    ("reply-willdurand/email_w10_mail.txt", "Great thanks Bort", "Here is the stuff."),
    ("reply-willdurand/email_thread.txt", "This is new email reply", "if you take a look"),
]


def relay(make_app: AppFactory, tmp_path: Path, text: str, **agents: object) -> str:
    app = agents_app(make_app, tmp_path, **agents)
    number, first = customer_ticket(app)
    raw = make_mail(
        sender=ANNA,
        to=reply_address(number),
        subject=f"Re: New ticket [#{number}]",
        body=text,
        in_reply_to=first,
    )
    outcome = deliver(app, raw, Envelope(mail_from=ANNA, rcpt_to=(reply_address(number),)))
    assert outcome.state is SpoolState.DONE
    relayed = [mail for recipient, mail in sent(app, "requester/agent_reply") if recipient == ALICE]
    assert len(relayed) == 1
    return body(relayed[0])


@pytest.mark.parametrize(("name", "kept", "dropped"), CASES)
def test_relayed_reply_has_no_quoted_history(
    make_app: AppFactory, tmp_path: Path, name: str, kept: str, dropped: str
) -> None:
    path = CORPUS_DEV / name
    need_corpus(path)
    text = relay(make_app, tmp_path, path.read_text(encoding="utf-8"))
    assert kept in text
    assert dropped not in text
    assert not [line for line in text.splitlines() if line.startswith(">")]
    assert "[#1] · to add to your request" in text  # the template's footer follows it


@pytest.mark.parametrize("keep", [True, False])
def test_signature_is_kept_unless_configured(
    make_app: AppFactory, tmp_path: Path, keep: bool
) -> None:
    path = CORPUS_DEV / "reply-github" / "email_BlackBerry.txt"
    need_corpus(path)
    text = relay(make_app, tmp_path, path.read_text(encoding="utf-8"), keep_signature=keep)
    assert "Here is another email" in text
    assert ("Sent from my BlackBerry" in text) is keep
