"""The outbox sender: claim due rows, send them over SMTP, record the result.

A claim moves the row's `next_attempt_at` forward by `claim_seconds` in a short
transaction of its own (SKIP LOCKED on PostgreSQL, so instances never take the same row);
the SMTP conversation happens outside any transaction; the result is written in a
second one. A sender that dies mid-send leaves a row that is simply due again later:
at least once, never lost.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy import Connection, select, update

from maild.clock import Clock
from maild.config import OutboundSettings
from maild.db.session import Database
from maild.errors import TemporaryFailure
from maild.logs import event
from maild.outbox.bounce import mark_bouncing
from maild.outbox.tables import OUTBOX
from maild.pipeline.apply import EventRow, record_events

log = logging.getLogger("maild.outbox")

Result = Literal["sent", "retry", "failed"]


# Enhanced status codes (RFC 3463) that condemn the address, not the mail or our relay:
# 5.1.x bad address, 5.2.x mailbox disabled or full for good.
_DEAD_ADDRESS = re.compile(r"\b5\.[12]\.\d{1,3}\b")


class SendError(Exception):
    """A delivery attempt failed; `permanent` for 5xx replies, else worth retrying."""

    def __init__(
        self,
        text: str,
        *,
        permanent: bool,
        code: int | None = None,
        recipient_refused: bool = False,
    ) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.code = code
        self.recipient_refused = recipient_refused

    @property
    def dead_address(self) -> bool:
        """The relay says the address itself is bad (not our relay's policy or config,
        which would otherwise mark every customer as bouncing)."""
        if not self.permanent:
            return False
        if _DEAD_ADDRESS.search(str(self)):
            return True
        return self.recipient_refused and self.code in (550, 551, 553)


class Deliver(Protocol):
    def __call__(self, mail_from: str, recipient: str, raw: bytes) -> None: ...


class SmtpTransport:
    """SMTP submission to the configured relay with smtplib (blocking: run it in a thread)."""

    def __init__(self, settings: OutboundSettings) -> None:
        self._settings = settings

    def _context(self) -> ssl.SSLContext:
        cafile = str(self._settings.ca_file) if self._settings.ca_file else None
        return ssl.create_default_context(cafile=cafile)

    @contextmanager
    def session(self) -> Iterator[Deliver]:
        s = self._settings
        client: smtplib.SMTP | None = None
        try:
            if s.tls == "implicit":
                client = smtplib.SMTP_SSL(
                    s.host, s.port, timeout=s.timeout, context=self._context()
                )
            else:
                client = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            if s.tls == "starttls":
                client.starttls(context=self._context())
            if s.username and s.password is not None:
                client.login(s.username, s.password.get_secret_value())
        except (OSError, smtplib.SMTPException) as exc:
            if client is not None:
                client.close()
            if isinstance(exc, smtplib.SMTPResponseException):
                # A refused greeting or login is the relay's (or our config's) state, not
                # the mail's: retry until the operator fixes it or the mail expires.
                text = f"{exc.smtp_code} {_text(exc.smtp_error)}"
                raise SendError(text, permanent=False) from exc
            raise SendError(f"cannot connect to {s.host}:{s.port}: {exc}", permanent=False) from exc
        try:
            yield lambda mail_from, recipient, raw: _send_one(client, mail_from, recipient, raw)
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()


def _send_one(client: smtplib.SMTP, mail_from: str, recipient: str, raw: bytes) -> None:
    try:
        client.sendmail(mail_from, [recipient], raw)
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = exc.recipients.get(recipient, (450, b"refused"))
        raise SendError(
            f"{code} {_text(text)}", permanent=code >= 500, code=code, recipient_refused=True
        ) from exc
    except smtplib.SMTPResponseException as exc:
        code = exc.smtp_code
        raise SendError(
            f"{code} {_text(exc.smtp_error)}", permanent=500 <= code < 600, code=code
        ) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise SendError(f"connection lost: {exc}", permanent=False) from exc


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Attempt:
    outbox_id: int
    result: Result
    error: str | None = None


_OUTBOX = OUTBOX


@dataclass(frozen=True, slots=True)
class Due:
    """A claimed row; `attempts` counts the attempt about to be made."""

    id: int
    ticket_id: int | None
    mail_from: str
    recipient: str
    raw: bytes
    attempts: int
    expires_at: datetime


class Sender:
    """Sends due outbox rows. `send_due` is one pass; `run` loops until stopped."""

    def __init__(
        self,
        db: Database,
        settings: OutboundSettings,
        clock: Clock,
        transport: SmtpTransport | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._transport = transport or SmtpTransport(settings)
        self._on_result = on_result

    def send_due(self) -> list[Attempt]:
        """Claim up to one batch of due rows and try each once."""
        with self._db.transaction() as session:
            rows = claim(session.connection(), self._clock.now(), self._settings, self._db)
        if not rows:
            return []
        attempts: list[Attempt] = []
        try:
            with self._transport.session() as deliver:
                for row in rows:
                    attempts.append(self._attempt(deliver, row))
        except SendError as exc:
            done = {a.outbox_id for a in attempts}
            for row in rows:
                if row.id not in done:
                    attempts.append(self._record(row, exc))
        return attempts

    def _attempt(self, deliver: Deliver, row: Due) -> Attempt:
        try:
            deliver(row.mail_from, row.recipient, row.raw)
        except SendError as exc:
            if not exc.permanent and exc.code is None:
                raise  # the connection is gone: the rest of the batch fails the same way
            return self._record(row, exc)
        return self._record(row, None)

    def _record(self, row: Due, error: SendError | None) -> Attempt:
        now = self._clock.now()
        values: dict[str, object]
        events: list[EventRow] = []
        if error is None:
            result: Result = "sent"
            values = {"state": "sent", "sent_at": now, "last_error": None}
        elif error.permanent or now >= row.expires_at:
            result = "failed"
            why = "rejected" if error.permanent else "expired"
            values = {"state": "failed", "last_error": str(error)}
            if row.ticket_id is not None:
                events.append(
                    EventRow(
                        row.ticket_id,
                        "outbound_failed",
                        {
                            "outbox_id": row.id,
                            "recipient": row.recipient,
                            "why": why,
                            "error": str(error),
                            "attempts": row.attempts,
                        },
                    )
                )
        else:
            result = "retry"
            values = {
                "next_attempt_at": now + backoff(row.attempts, self._settings),
                "last_error": str(error),
            }
        with self._db.transaction() as session:
            conn = session.connection()
            conn.execute(update(_OUTBOX).where(_OUTBOX.c.id == row.id).values(**values))
            if error is not None and error.dead_address:
                # The relay refused the recipient outright: as good as a bounce.
                until = now + timedelta(seconds=self._settings.bounce_suppress)
                mark_bouncing(conn, row.recipient, str(error), until, now)
            record_events(conn, events, now)
        if self._on_result is not None:
            self._on_result(result)
        event(
            log,
            "outbound mail",
            logging.INFO if result == "sent" else logging.WARNING,
            outbox_id=row.id,
            recipient=row.recipient,
            result=result,
            error=str(error) if error else None,
        )
        return Attempt(row.id, result, str(error) if error else None)

    def run(self, wake: threading.Event, stop: threading.Event) -> None:
        """Send whenever woken (the scheduler wakes it every interval) until `stop`."""
        database_down = False
        while not stop.is_set():
            wake.clear()
            try:
                while not stop.is_set() and self.send_due():
                    pass
                if database_down:
                    database_down = False
                    event(log, "database available again")
            except TemporaryFailure as exc:
                # Once per outage, not once per interval for as long as it lasts.
                if not database_down:
                    database_down = True
                    event(log, "database unavailable", logging.WARNING, error=str(exc))
            except Exception:
                # The rows stay claimed and come due again; a dead sender thread would
                # stop all outbound mail without a sound, so log and carry on.
                log.exception("outbox sender pass failed")
            wake.wait(self._settings.interval)


class SenderThread:
    """The sender on a thread of the daemon (smtplib blocks); the scheduler wakes it."""

    def __init__(self, sender: Sender) -> None:
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=sender.run, args=(self.wake, self._stop), name="maild-outbox", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the mail being sent, then stop."""
        self._stop.set()
        self.wake.set()
        self._thread.join()


def backoff(attempts: int, settings: OutboundSettings) -> timedelta:
    """Wait before the next try after `attempts` tries: base, 2 base, 4 base ... capped."""
    seconds = settings.retry_base * 2 ** max(attempts - 1, 0)
    return timedelta(seconds=min(seconds, settings.retry_max))


def claim(conn: Connection, now: datetime, settings: OutboundSettings, db: Database) -> list[Due]:
    """Take up to a batch of due rows in the caller's transaction: each is moved
    `claim_seconds` ahead and its attempt counted. On PostgreSQL the rows stay locked
    until that transaction ends, and other instances skip them (SKIP LOCKED)."""
    query = (
        select(
            _OUTBOX.c.id,
            _OUTBOX.c.ticket_id,
            _OUTBOX.c.mail_from,
            _OUTBOX.c.recipient,
            _OUTBOX.c.raw,
            _OUTBOX.c.attempts,
            _OUTBOX.c.expires_at,
        )
        .where(_OUTBOX.c.state == "pending", _OUTBOX.c.next_attempt_at <= now)
        .order_by(_OUTBOX.c.next_attempt_at, _OUTBOX.c.id)
        .limit(settings.batch_size)
    )
    if db.is_postgres:
        query = query.with_for_update(skip_locked=True)
    rows = list(conn.execute(query).all())
    if rows:
        conn.execute(
            update(_OUTBOX)
            .where(_OUTBOX.c.id.in_([row.id for row in rows]))
            .values(
                attempts=_OUTBOX.c.attempts + 1,
                next_attempt_at=now + timedelta(seconds=settings.claim_seconds),
            )
        )
    # The claim counted this attempt; the rows carry the count as of the send.
    return [
        Due(
            id=row.id,
            ticket_id=row.ticket_id,
            mail_from=row.mail_from,
            recipient=row.recipient,
            raw=bytes(row.raw),
            attempts=row.attempts + 1,
            expires_at=row.expires_at,
        )
        for row in rows
    ]
