"""The orchestrator: claim a spooled mail, run the steps, apply, mark it done — one transaction.

A crash anywhere rolls the whole mail back to pending; it is replayed, never half-applied.
A step that cannot cope raises Quarantine or Ignore; any other error quarantines the mail
with the step it happened in. Only database outages leave the mail pending.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from maild import spool
from maild.agents.desk import AgentDesk
from maild.clock import Clock
from maild.config import Settings
from maild.db import queries
from maild.db.session import Database
from maild.errors import Ignore, Quarantine, TemporaryFailure
from maild.logs import event
from maild.numbering import Numbering
from maild.outbox.bounce import record_bounce
from maild.outbox.queue import Acknowledger
from maild.pipeline.apply import apply, opening_fields
from maild.pipeline.classify import classify
from maild.pipeline.limits import MailLimits
from maild.pipeline.parse import Parsed, parse_or_error
from maild.pipeline.thread import thread
from maild.rules import RuleSet, choose_agent
from maild.sla.track import SlaTracker
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
    # outbox (issue 6): the loop/abuse rule that kept an automatic reply back (a metric).
    auto_reply_suppressed: str | None = None
    # Ignored as an automatic mail (auto-reply, bounce) that threads to no ticket yet: one
    # that came before its conversation, which a bulk import files again at its end.
    unthreaded: bool = False


class _Unthreaded(Ignore):
    """An auto-reply or bounce that belongs to no ticket."""


class _NotPending(Exception):
    """The mail was no longer pending when its outcome was to be recorded."""


def _summary(mail: Parsed | None, raw: bytes | None) -> spool.Summary:
    if isinstance(mail, ParsedMail):
        sender = mail.from_
        from_ = None
        if sender is not None:
            from_ = f"{sender.name} <{sender.address}>" if sender.name else sender.address
        return spool.Summary(from_, mail.subject, mail.message_id)
    return spool.summarise(raw) if raw is not None else spool.Summary(None, None, None)


class _Step:
    """Remembers which step is running, so an unexpected error names it."""

    name = "claim"


class Processor:
    """`rules` gives the routing rules in force; it is asked once per mail, so a reload
    takes effect from the next mail on."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        rules: Callable[[], RuleSet],
        sla: SlaTracker | None = None,
    ) -> None:
        self._sla = sla
        self._db = db
        self._settings = settings
        self._clock = clock
        self._rules = rules
        self._limits = MailLimits.of(settings.mail)
        self._numbering = Numbering(settings.tickets)
        self._acknowledger = Acknowledger(settings, self._numbering)
        self._agents = AgentDesk(settings, self._numbering)

    def process(
        self, spool_id: int, parsed: Parsed | None = None, entry: spool.Claimed | None = None
    ) -> Outcome | None:
        """Process one mail by id; None if it is not pending (done already, or taken).

        `parsed` is the result of `parse_or_error` on its raw bytes, when the caller
        parsed ahead (see parse_ahead.py). `entry` is the spool row as the caller wrote
        it (a bulk import, a moment ago): on SQLite, whose transactions lock the whole
        file, it is not read back, and the outcome is recorded only if the row is still
        pending at the end (otherwise the work is rolled back and None returned).
        """
        if entry is not None and self._db.is_postgres:
            entry = None  # rows are locked one by one there: the claim takes the lock
        return self._process(spool_id=spool_id, parsed=parsed, entry=entry)

    def pinned(self) -> AbstractContextManager[None]:
        """For a loop of `process` calls: they share one database connection."""
        return self._db.pinned()

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

    def _process(
        self,
        *,
        spool_id: int | None = None,
        after_id: int = 0,
        parsed: Parsed | None = None,
        entry: spool.Claimed | None = None,
    ) -> Outcome | None:
        if parsed is None and not self._db.is_postgres:
            # SQLite has one writer lock for the whole file: parse before taking it, so
            # the listener's spool writes are not kept waiting behind a large mail.
            # (PostgreSQL locks rows: parsing under the claim keeps workers from parsing
            # the same mail twice.)
            peeked = spool.peek(self._db, spool_id=spool_id, after_id=after_id)
            if peeked is None:
                return None
            spool_id, parsed = peeked.id, parse_or_error(peeked.raw, self._limits)

        claimed: int | None = None
        mail: Parsed | None = parsed
        for attempt in (1, 2):
            step = _Step()
            try:
                # Replayable: a lost commit leaves the spool row pending, to be redone.
                with self._db.begin(replayable=True) as conn:
                    with_raw = parsed is None
                    if entry is not None and attempt == 1:
                        claimed_entry: spool.Claimed | None = entry
                    elif spool_id is not None:
                        claimed_entry = spool.claim(conn, spool_id, with_raw=with_raw)
                    else:
                        claimed_entry = spool.claim_next(conn, after_id=after_id, with_raw=with_raw)
                    if claimed_entry is None:
                        return None
                    claimed = claimed_entry.id
                    if mail is None:
                        mail = parse_or_error(claimed_entry.raw or b"", self._limits)
                    outcome = self._pipeline(conn, claimed_entry, mail, step)
                    self._finish(conn, claimed, outcome, _summary(mail, claimed_entry.raw))
                return outcome
            except _NotPending:
                return None  # rolled back: another process filed it meanwhile
            except IntegrityError as exc:
                # Another instance created the same contact or message first; a second
                # pass sees its row. Twice is not a race any more.
                if attempt == 1 and claimed is not None:
                    spool_id = claimed
                    continue
                outcome = self._unexpected(claimed, step, exc)
            except (Quarantine, Ignore) as exc:
                state = (
                    SpoolState.QUARANTINED if isinstance(exc, Quarantine) else SpoolState.IGNORED
                )
                outcome = Outcome(
                    claimed or 0,
                    state,
                    step=exc.step,
                    reason=exc.reason,
                    unthreaded=isinstance(exc, _Unthreaded),
                )
            except TemporaryFailure:
                raise
            except Exception as exc:  # the one catch-all: the mail is kept, with what went wrong
                if claimed is None:
                    raise
                outcome = self._unexpected(claimed, step, exc)
            break
        # The failed attempt was rolled back whole; record the outcome on its own.
        with self._db.begin(replayable=True) as conn:
            unreadable = not isinstance(mail, ParsedMail)
            entry = None if claimed is None else spool.claim(conn, claimed, with_raw=unreadable)
            if entry is None:
                return None
            self._finish(conn, entry.id, outcome, _summary(mail, entry.raw))
        return outcome

    def _unexpected(self, spool_id: int | None, step: _Step, exc: Exception) -> Outcome:
        log.error("pipeline error", exc_info=exc, extra={"spool_id": spool_id, "step": step.name})
        return Outcome(
            spool_id or 0,
            SpoolState.QUARANTINED,
            step=step.name,
            reason=f"{UNEXPECTED}{type(exc).__name__}: {exc}"[:2000],
        )

    def _finish(
        self, conn: Connection, spool_id: int, outcome: Outcome, summary: spool.Summary
    ) -> None:
        finished = spool.finish(
            conn,
            spool_id,
            outcome.state,
            self._clock.now(),
            summary,
            step=outcome.step,
            reason=outcome.reason,
        )
        if not finished:
            raise _NotPending
        event(
            log,
            "mail processed",
            spool_id=spool_id,
            message_id=summary.message_id,
            result=outcome.state.value,
            ticket=outcome.ticket_number,
            step=outcome.step,
            reason=outcome.reason,
        )

    def _pipeline(
        self, conn: Connection, entry: spool.Claimed, parsed: Parsed, step: _Step
    ) -> Outcome:
        envelope = entry.envelope
        step.name = "parse"
        if isinstance(parsed, Exception):
            raise parsed
        mail = parsed

        step.name = "dedupe"
        number = queries.find_duplicate(conn, mail.message_id, mail.body_hash)
        if number is not None:
            raise Ignore("dedupe", f"duplicate of {mail.message_id} already in ticket {number}")

        step.name = "classify"
        mail_class = classify(mail, envelope)

        step.name = "thread"
        decision = thread(mail, queries.SqlThreadIndex(conn), self._numbering)
        if mail_class is MailClass.BOUNCE:
            # outbox (issue 6): a bounce of one of our mails is noted on its ticket (even
            # when its subject carries the tag), in this transaction (an Ignore would
            # roll the note back), and never makes or changes a ticket.
            bounced = record_bounce(
                conn,
                entry.id,
                self._clock.now(),
                self._settings.outbound.bounce_suppress,
                mail.bounce_report,
            )
            if bounced is not None:
                return Outcome(entry.id, SpoolState.IGNORED, step="classify", reason=bounced)
        # agents (issue 7): an agent's own, verified mail about a ticket is acted on here;
        # from an agent's address but unverified, it is noted and handled as a customer's.
        step.name = "identify"
        rules = self._rules()
        agent_mail = self._agents.identify(
            conn, mail, mail_class, envelope, decision, rules.directory
        )
        if agent_mail is not None and agent_mail.verdict.verified:
            step.name = "agent"
            self._agents.handle(
                conn, agent_mail, mail, envelope, entry.id, rules.directory, self._clock.now()
            )
            # sla (issue 8): a reply to the customer meets response targets; commands
            # may pause, resolve or re-prioritise.
            if self._sla is not None:
                step.name = "sla"
                self._sla.after_agent_mail(conn, agent_mail.ticket_id, entry.id, self._clock.now())
            return Outcome(entry.id, SpoolState.DONE, ticket_number=agent_mail.number)
        if agent_mail is not None:
            self._agents.refuse(conn, agent_mail, mail, self._clock.now())
        current = (
            None if decision.ticket_id is None else queries.current_ticket(conn, decision.ticket_id)
        )
        decision = self._agents.follow_up(conn, decision, mail_class, current, self._clock.now())

        if decision.ticket_id is None:
            current = None  # a follow-up opens a new ticket
            if mail_class in (MailClass.AUTO_REPLY, MailClass.BOUNCE):
                raise _Unthreaded("classify", f"{mail_class.value} that belongs to no ticket")
            requester = self._requester(mail, envelope)
        else:
            requester = ("", "")

        step.name = "route"
        sender = mail.from_.address if mail.from_ else None
        # Looked up before this mail adds anyone; apply reuses the answer.
        looked_up = queries.look_up_contacts(conn, [sender] if sender else [])
        route = rules.route(
            mail,
            envelope,
            mail_class=mail_class,
            is_reply=decision.ticket_id is not None,
            came_in_on=self._came_in_on(envelope),
            known_customer=any(found is not None for found in looked_up.values()),
            received_at=entry.received_at,
            calendars=self._sla.calendars()
            if self._sla is not None and rules.asks("business_hours")
            else None,
        )
        if route.disposition is not None:
            if route.disposition.action == "quarantine":
                raise Quarantine("route", route.disposition.reason)
            raise Ignore("route", route.disposition.reason)
        assignment = None
        if route.assign is not None:
            assignment = choose_agent(route.assign, rules.directory, queries.SqlAgentLoad(conn))

        new_ticket: dict[str, Any] | None = None
        opening = None
        if decision.ticket_id is None:
            new_ticket = opening_fields(route, assignment, self._clock.now())
            if self._sla is not None:
                step.name = "sla"
                opening = self._sla.opening(new_ticket, requester[0], self._clock.now())
                if opening is not None:
                    new_ticket.update(opening.columns)

        step.name = "apply"
        applied = apply(
            conn,
            mail=mail,
            mail_class=mail_class,
            decision=decision,
            requester=requester,
            route=route,
            assignment=assignment,
            spool_id=entry.id,
            settings=self._settings,
            numbering=self._numbering,
            now=self._clock.now(),
            looked_up=looked_up,
            new_ticket=new_ticket,
            current=current,
        )
        # outbox (issue 6): the acknowledgement is queued in this same transaction.
        step.name = "outbox"
        queued = self._acknowledger.queue(
            conn,
            ticket_id=applied.ticket_id,
            number=applied.ticket_number,
            created_ticket=applied.created_ticket,
            mail=mail,
            mail_class=mail_class,
            envelope=envelope,
            requester=requester,
            route=route,
            now=self._clock.now(),
        )
        # agents (issue 7): the assignee (or, for a new ticket, the team) hears of it.
        self._agents.notify(
            conn,
            ticket_id=applied.ticket_id,
            created_ticket=applied.created_ticket,
            mail=mail,
            mail_class=mail_class,
            envelope=envelope,
            spool_id=entry.id,
            directory=rules.directory,
            now=self._clock.now(),
        )
        # sla (issue 8): due times start with the ticket and move with each customer mail.
        if self._sla is not None:
            step.name = "sla"
            if applied.created_ticket:
                if opening is not None:
                    self._sla.opened(conn, applied.ticket_id, opening, self._clock.now())
            elif mail_class is MailClass.HUMAN:
                self._sla.on_customer_reply(conn, applied.ticket_id, self._clock.now(), current)
            else:
                self._sla.on_ticket_change(conn, applied.ticket_id, self._clock.now(), current)
        return Outcome(
            entry.id,
            SpoolState.DONE,
            ticket_number=applied.ticket_number,
            auto_reply_suppressed=queued.suppressed,
        )

    def _came_in_on(self, envelope: Envelope) -> str | None:
        """The support address the mail was delivered to, when the transport says so."""
        for rcpt in envelope.rcpt_to:
            if self._settings.is_support_address(rcpt):
                return rcpt.lower()
        return None

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
