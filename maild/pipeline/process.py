"""The orchestrator: claim a spooled mail, run the steps, apply, mark it done — one transaction.

A crash anywhere rolls the whole mail back to pending; it is replayed, never half-applied.
A step that cannot cope raises Quarantine or Ignore; any other error quarantines the mail
with the step it happened in. Only database outages leave the mail pending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.utils import getaddresses

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from maild import spool
from maild.clock import Clock
from maild.config import Settings
from maild.db import queries
from maild.db.models import SpoolEntry
from maild.db.session import Database
from maild.errors import Ignore, Quarantine, TemporaryFailure
from maild.logs import event
from maild.numbering import Numbering
from maild.pipeline.apply import apply
from maild.pipeline.classify import classify
from maild.pipeline.parse import parse
from maild.pipeline.thread import thread
from maild.types import Envelope, MailClass, ParsedMail, SpoolState

log = logging.getLogger("maild.process")

# Marks quarantine reasons that come from a bug rather than from the mail.
UNEXPECTED = "unexpected error: "


@dataclass(frozen=True, slots=True)
class Outcome:
    spool_id: int
    state: SpoolState
    ticket_number: str | None = None
    step: str | None = None
    reason: str | None = None


Parsed = ParsedMail | Exception


def parse_or_error(raw: bytes) -> Parsed:
    """Parse, keeping a failure as a value so it is recorded in the claiming transaction."""
    try:
        return parse(raw)
    except Exception as exc:  # the orchestrator's catch-all, deferred to _run
        return exc


class _Step:
    """Remembers which step is running, so an unexpected error names it."""

    name = "claim"


class Processor:
    def __init__(self, db: Database, settings: Settings, clock: Clock) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._numbering = Numbering(settings.tickets)

    def process(self, spool_id: int, parsed: Parsed | None = None) -> Outcome | None:
        """Process one mail by id; None if it is not pending (done already, or taken).

        `parsed` is the result of `parse_or_error` on its raw bytes, when the caller
        parsed ahead (see parse_ahead.py).
        """
        if parsed is not None:
            with self._db.transaction() as session:
                entry = spool.claim(session, spool_id)
                return None if entry is None else self._run(session, entry, parsed)
        return self._process(spool_id=spool_id)

    def process_next(self, after_id: int = 0) -> Outcome | None:
        """Process the oldest pending mail after `after_id`; None when there is none."""
        return self._process(after_id=after_id)

    def drain(self) -> list[Outcome]:
        """Process until nothing is pending. Raises TemporaryFailure if the database goes away."""
        outcomes: list[Outcome] = []
        last = 0
        while (outcome := self.process_next(after_id=last)) is not None:
            outcomes.append(outcome)
            last = outcome.spool_id
        return outcomes

    def _process(self, *, spool_id: int | None = None, after_id: int = 0) -> Outcome | None:
        if self._db.is_postgres:
            # Row locks are cheap here: parse while holding the claim, so workers never
            # parse the same mail twice.
            with self._db.transaction() as session:
                if spool_id is not None:
                    entry = spool.claim(session, spool_id)
                else:
                    entry = spool.claim_next(session, after_id=after_id)
                return (
                    None if entry is None else self._run(session, entry, parse_or_error(entry.raw))
                )
        # SQLite has one writer lock for the whole file: parse before taking it, so the
        # listener's spool writes are not kept waiting behind a large mail.
        peeked = spool.peek(self._db, spool_id=spool_id, after_id=after_id)
        if peeked is None:
            return None
        parsed = parse_or_error(peeked.raw)
        with self._db.transaction() as session:
            entry = spool.claim(session, peeked.id)
            return None if entry is None else self._run(session, entry, parsed)

    def _run(self, session: Session, entry: SpoolEntry, parsed: Parsed) -> Outcome:
        step = _Step()
        try:
            outcome = self._pipeline_with_retry(session, entry, parsed, step)
        except (Quarantine, Ignore) as exc:
            state = SpoolState.QUARANTINED if isinstance(exc, Quarantine) else SpoolState.IGNORED
            outcome = Outcome(entry.id, state, step=exc.step, reason=exc.reason)
        except (TemporaryFailure, OperationalError):
            raise
        except Exception as exc:  # the one catch-all: the mail is kept, with what went wrong
            log.exception("pipeline error", extra={"spool_id": entry.id, "step": step.name})
            outcome = Outcome(
                entry.id,
                SpoolState.QUARANTINED,
                step=step.name,
                reason=f"{UNEXPECTED}{type(exc).__name__}: {exc}"[:2000],
            )
        spool.finish(
            entry, outcome.state, self._clock.now(), step=outcome.step, reason=outcome.reason
        )
        event(
            log,
            "mail processed",
            spool_id=entry.id,
            message_id=entry.header_message_id,
            result=outcome.state.value,
            ticket=outcome.ticket_number,
            step=outcome.step,
            reason=outcome.reason,
        )
        return outcome

    def _pipeline_with_retry(
        self, session: Session, entry: SpoolEntry, parsed: Parsed, step: _Step
    ) -> Outcome:
        # A concurrent instance may create the same contact or message first; the unique
        # constraint tells us, and a second pass sees its row.
        try:
            with session.begin_nested():
                return self._pipeline(session, entry, parsed, step)
        except IntegrityError:
            with session.begin_nested():
                return self._pipeline(session, entry, parsed, step)

    def _pipeline(
        self, session: Session, entry: SpoolEntry, parsed: Parsed, step: _Step
    ) -> Outcome:
        envelope = Envelope(**{**entry.envelope, "rcpt_to": tuple(entry.envelope["rcpt_to"])})
        step.name = "parse"
        if isinstance(parsed, Exception):
            raise parsed
        mail = parsed

        step.name = "dedupe"
        duplicate = queries.find_message(session, mail.message_id, mail.body_hash)
        if duplicate is not None:
            number = duplicate.ticket.number
            raise Ignore("dedupe", f"duplicate of {mail.message_id} already in ticket {number}")

        step.name = "classify"
        mail_class = classify(mail, envelope)

        step.name = "thread"
        decision = thread(mail, queries.SqlThreadIndex(session), self._numbering)
        if decision.ticket_id is None:
            if mail_class in (MailClass.AUTO_REPLY, MailClass.BOUNCE):
                raise Ignore("classify", f"{mail_class.value} that belongs to no ticket")
            requester = self._requester(mail, envelope)
        else:
            requester = ("", "")

        step.name = "apply"
        applied = apply(
            session,
            mail=mail,
            mail_class=mail_class,
            decision=decision,
            requester=requester,
            spool_id=entry.id,
            settings=self._settings,
            numbering=self._numbering,
            now=self._clock.now(),
        )
        return Outcome(entry.id, SpoolState.DONE, ticket_number=applied.ticket_number)

    def _requester(self, mail: ParsedMail, envelope: Envelope) -> tuple[str, str]:
        address, name = _sender(mail, envelope)
        if not address:
            raise Quarantine(
                "identify", "no sender: no readable From, Sender, Reply-To or envelope"
            )
        if self._settings.is_support_address(address):
            raise Ignore("classify", f"sent from our own address {address} (mail loop)")
        return address, name


def _sender(mail: ParsedMail, envelope: Envelope) -> tuple[str, str]:
    """Who to answer: From, else Sender / Reply-To, else the envelope (or its Return-Path trace)."""
    if mail.from_ and mail.from_.address:
        return mail.from_.address, mail.from_.name
    if mail.reply_to and mail.reply_to[0].address:
        return mail.reply_to[0].address, mail.reply_to[0].name
    for candidate in (envelope.mail_from, mail.header("sender"), mail.header("return-path")):
        found = getaddresses([candidate or ""])
        if found and "@" in found[0][1]:
            return found[0][1].lower(), found[0][0]
    return "", ""
