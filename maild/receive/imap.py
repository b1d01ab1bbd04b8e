"""IMAP mailboxes into the spool. The only module that imports imapclient.

Each `[[imap]]` mailbox gets one poller thread (imapclient blocks; it never runs on the
event loop). A pass over a folder: SELECT, find the UIDs above the checkpoint, and per
batch: read RFC822.SIZE, move oversize mail to the too-large folder without downloading
it, fetch the rest with BODY.PEEK[] (so nothing is marked read before it is safe), commit
it to the spool, call `on_spooled`, and only then move / flag / delete it on the server
and advance the checkpoint. A crash between the commit and the acknowledgement re-fetches
the mail next time; the pipeline's Message-ID + body-hash dedupe keeps it to one message.

The checkpoint is UIDVALIDITY + last UID per (mailbox, folder). When UIDVALIDITY changes
the old UIDs mean nothing, so the folder is rescanned from UID 1 (dedupe again).

Authentication is LOGIN with a password, or XOAUTH2 with an access token from
imap_oauth (a command, or the refresh-token flow). When the token's expiry is known the
poller reconnects with a fresh one before it runs out, rather than waiting for the server
to drop the session; a refresh token that expires within a week is warned about daily.

With several instances on one PostgreSQL database a mailbox is served by whoever holds
its lease row; the holder renews it while polling and releases it on a clean stop, and a
crashed holder's lease is taken over once it expires. Instances need synchronised clocks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError
from prometheus_client import Counter, Gauge
from sqlalchemy import CursorResult, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from maild import spool
from maild.clock import Clock
from maild.config import ImapSettings, Settings
from maild.db.models import ImapCheckpoint, ImapLease
from maild.db.session import Database
from maild.errors import ConfigError, TemporaryFailure
from maild.health import Metrics
from maild.logs import event
from maild.receive.imap_oauth import AccessToken, TokenError, TokenSource, token_source
from maild.types import Envelope

log = logging.getLogger("maild.imap")

ErrorKind = Literal["auth", "token", "tls", "connect", "protocol", "database", "internal"]
State = Literal["starting", "standby", "syncing", "idle", "polling", "error", "stopped"]

SEEN = b"\\Seen"
DELETED = b"\\Deleted"
# How often a blocked IDLE wait looks at the stop flag (seconds): bounds shutdown time.
_IDLE_TICK = 0.5
# Reconnect this long before the access token expires (servers may end the session then).
_TOKEN_MARGIN = 60.0
# Warn about a refresh token this close to expiry, at most once per _WARN_EVERY.
_REFRESH_WARNING = timedelta(days=7)
_WARN_EVERY = timedelta(days=1)


# --- status -------------------------------------------------------------------------------


@dataclass
class MailboxStatus:
    """What /healthz shows of one mailbox."""

    state: State = "starting"
    last_fetch: datetime | None = None
    errors: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    # The refresh-token flow only: when the refresh token stops working.
    oauth_refresh_expires_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        expires = self.oauth_refresh_expires_at
        return {
            "state": self.state,
            "last_fetch": self.last_fetch.isoformat() if self.last_fetch else None,
            "errors": dict(self.errors),
            "last_error": self.last_error,
            "oauth_refresh_expires_at": expires.isoformat() if expires else None,
        }


class _ImapMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.received = metrics.received
        self.errors = Counter(
            "maild_imap_errors",
            "IMAP poller errors, by mailbox and kind (auth, token, tls, connect, protocol, ...)",
            ["mailbox", "kind"],
            registry=metrics.registry,
        )
        self.last_fetch = Gauge(
            "maild_imap_last_fetch_timestamp_seconds",
            "Unix time of the last successful pass over a mailbox",
            ["mailbox"],
            registry=metrics.registry,
        )
        self.refresh_days = Gauge(
            "maild_imap_oauth_refresh_token_days_left",
            "Days until the mailbox's OAuth2 refresh token expires (refresh-token flow)",
            ["mailbox"],
            registry=metrics.registry,
        )


# --- database: checkpoints and leases -----------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    uidvalidity: int
    last_uid: int


def load_checkpoint(db: Database, mailbox: str, folder: str) -> Checkpoint | None:
    """The stored position of a folder, or None before its first pass."""
    with db.transaction() as session:
        row = session.get(ImapCheckpoint, (mailbox, folder))
        return None if row is None else Checkpoint(row.uidvalidity, row.last_uid)


def save_checkpoint(
    db: Database, mailbox: str, folder: str, checkpoint: Checkpoint, now: datetime
) -> None:
    with db.transaction() as session:
        row = session.get(ImapCheckpoint, (mailbox, folder))
        if row is None:
            session.add(
                ImapCheckpoint(
                    mailbox=mailbox,
                    folder=folder,
                    uidvalidity=checkpoint.uidvalidity,
                    last_uid=checkpoint.last_uid,
                    updated_at=now,
                )
            )
        else:
            row.uidvalidity = checkpoint.uidvalidity
            row.last_uid = checkpoint.last_uid
            row.updated_at = now


class Lease:
    """The right to poll one mailbox, held by one instance at a time."""

    def __init__(
        self, db: Database, mailbox: str, holder: str, seconds: float, clock: Clock
    ) -> None:
        self._db = db
        self._mailbox = mailbox
        self._holder = holder
        self._seconds = seconds
        self._clock = clock

    def acquire(self) -> bool:
        """Take the lease if it is free or expired, or renew it if held. True if held now.

        One conditional UPDATE decides, so two instances racing for an expired lease
        cannot both win: the second one's WHERE no longer matches.
        """
        now = self._clock.now()
        values = {"holder": self._holder, "expires_at": now + timedelta(seconds=self._seconds)}
        with self._db.transaction() as session:
            result = session.execute(
                update(ImapLease)
                .where(
                    ImapLease.mailbox == self._mailbox,
                    (ImapLease.expires_at < now) | (ImapLease.holder == self._holder),
                )
                .values(**values),
                execution_options={"synchronize_session": False},
            )
            if isinstance(result, CursorResult) and result.rowcount == 1:
                return True
            insert = pg_insert if self._db.is_postgres else sqlite_insert
            created = session.execute(
                insert(ImapLease)
                .values(mailbox=self._mailbox, **values)
                .on_conflict_do_nothing(index_elements=["mailbox"])
            )
            return isinstance(created, CursorResult) and created.rowcount == 1

    def release(self) -> None:
        """Let another instance take over at once (on a clean stop)."""
        with self._db.transaction() as session:
            session.execute(
                update(ImapLease)
                .where(ImapLease.mailbox == self._mailbox, ImapLease.holder == self._holder)
                .values(expires_at=self._clock.now() - timedelta(seconds=1)),
                execution_options={"synchronize_session": False},
            )

    def holder(self) -> str | None:
        with self._db.transaction() as session:
            return session.scalar(
                select(ImapLease.holder).where(ImapLease.mailbox == self._mailbox)
            )

    def held(self) -> bool:
        """True if this holder's lease is in force: a read, cheaper than renewing it."""
        with self._db.transaction() as session:
            row = session.get(ImapLease, self._mailbox)
            return (
                row is not None
                and row.holder == self._holder
                and row.expires_at > self._clock.now()
            )


# --- one mailbox --------------------------------------------------------------------------


class _LeaseLost(Exception):
    """Another instance holds the mailbox now: stop serving it."""


# What a server, a network or a token endpoint can raise; anything else is a bug.
SERVER_ERRORS = (IMAPClientError, OSError, TokenError)


def connect(
    settings: ImapSettings, password: str, token: TokenSource | None
) -> tuple[IMAPClient, AccessToken | None]:
    """A logged-in client (STARTTLS first if configured), and the access token it used.

    With a `token` source it authenticates by XOAUTH2, else by LOGIN with `password`.
    """
    s = settings
    context = None
    if s.tls != "none":
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
    client = IMAPClient(
        s.host, s.effective_port, ssl=s.tls == "implicit", ssl_context=context, timeout=s.timeout
    )
    access = None
    try:
        if s.tls == "starttls":
            client.starttls(context)
        if token is not None:
            access = token.access_token()
            client.oauth2_login(s.username, access.token)
        else:
            client.login(s.username, password)
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    return client, access


def describe(exc: BaseException) -> str:
    """An error as an operator reads it.

    imaplib puts the server's words in bytes, and imapclient's LoginError wraps their
    repr ("b'[AUTHENTICATIONFAILED] ...'"): both are unwrapped to the words.
    """
    if len(exc.args) == 1 and isinstance(exc.args[0], bytes):
        return exc.args[0].decode("utf-8", "replace")
    text = str(exc) or type(exc).__name__
    wrapped = re.fullmatch(r"b(['\"])(.*)\1", text, re.DOTALL)
    return wrapped.group(2) if wrapped else text


def classify(exc: BaseException) -> ErrorKind:
    """The kind of error, as counted in metrics and /healthz."""
    if isinstance(exc, TokenError):
        return "token"
    if isinstance(exc, LoginError):
        return "auth"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls"
    if isinstance(exc, OSError | socket.timeout):
        return "connect"
    if isinstance(exc, IMAPClientError):
        return "protocol"
    if isinstance(exc, TemporaryFailure):
        return "database"
    return "internal"


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class Poller:
    """Takes the mail of one mailbox into the spool; `run` loops, `sync_once` is one pass.

    `on_spooled` is called after each batch's spool commit and before that batch is
    acknowledged on the server (moved, flagged or deleted). If it raises, the batch stays
    in the folder and the exception propagates from `sync_once`: tests use this seam to
    stand for a crash between commit and acknowledgement.
    """

    def __init__(
        self,
        settings: ImapSettings,
        password: str,
        max_message_size: int,
        db: Database,
        clock: Clock,
        on_spooled: Callable[[], None],
        *,
        holder: str,
        token: TokenSource | None = None,
        metrics: _ImapMetrics | None = None,
        accepting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.settings = settings
        # hardening (issue 9): False while the spool is past its high mark; no fetching then.
        self._accepting = accepting
        self._held_back = False
        self.status = MailboxStatus()
        self._password = password
        self._max_size = max_message_size
        self._db = db
        self._clock = clock
        self._on_spooled = on_spooled
        self._token = token
        self._metrics = metrics
        # time.monotonic() by which to reconnect with a fresh access token, if known.
        self._session_ends: float | None = None
        self._warned_at: datetime | None = None
        self._lock = threading.Lock()
        self.lease = Lease(db, settings.name, holder, settings.lease_seconds, clock)
        self._lease_renewed = 0.0
        # Set by `run`: passes then check the lease before each batch. `sync_once` (one
        # pass, tests and tools) serves whoever calls it, without a lease.
        self._leased = False

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve the mailbox until `stop` is set: lease, connect, sync, wait, reconnect."""
        backoff = 1.0
        name = self.settings.name
        self._leased = True
        while not stop.is_set():
            try:
                if not self._renew_lease(force=True):
                    self._set_state("standby")
                    stop.wait(self.settings.lease_seconds / 3)
                    continue
                client = self._connect()
                try:
                    self._serve(client, stop)
                finally:
                    _close(client)
                backoff = 1.0
            except _LeaseLost:
                event(log, "imap lease lost", logging.WARNING, mailbox=name)
            # The thread is this mailbox's only supervisor: whatever goes wrong (a bad
            # password, a dropped connection, a database outage, a bug) must end in a
            # logged, counted error and a retry, never in a silently dead thread.
            except Exception as exc:
                kind = self._record_error(exc)
                event(
                    log,
                    "imap error",
                    logging.WARNING,
                    mailbox=name,
                    kind=kind,
                    error=describe(exc),
                    retry_in=backoff,
                )
                stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.max_backoff)
        self._set_state("stopped")
        with contextlib.suppress(TemporaryFailure):
            self.lease.release()

    def sync_once(self) -> int:
        """Connect, take every watched folder's new mail, log out. Returns mails spooled."""
        client = self._connect()
        try:
            return self._sync(client)
        finally:
            _close(client)

    def _serve(self, client: IMAPClient, stop: threading.Event) -> None:
        folders = self.settings.folders
        use_idle = self.settings.idle and len(folders) == 1 and client.has_capability("IDLE")
        while not stop.is_set():
            self._set_state("syncing")
            self._sync(client)
            self._warn_refresh_expiry()
            if use_idle and _announced(client):
                continue  # mail came in during the pass: IDLE would not announce it again
            if self._token_ending():
                return  # `run` reconnects, with a fresh token
            # Mail left behind for backpressure is not news to IDLE: poll for it instead.
            if use_idle and not self._held_back:
                self._set_state("idle")
                self._idle(client, stop)
            else:
                self._set_state("polling")
                self._wait(stop, self.settings.poll_interval)

    def _idle(self, client: IMAPClient, stop: threading.Event) -> None:
        """Wait in IDLE until the folder changes, `stop`, or it is time to re-issue IDLE."""
        renew_at = min(time.monotonic() + self.settings.idle_renew, self._session_ends or math.inf)
        client.idle()
        try:
            while not stop.is_set() and time.monotonic() < renew_at:
                if _buffered(client, self.settings.timeout):
                    return
                responses = client.idle_check(timeout=_IDLE_TICK)
                # "* OK Still here" keep-alives change nothing; anything else might.
                if any(not (r and r[0] in (b"OK", "OK")) for r in responses):
                    return
                if not self._renew_lease():
                    raise _LeaseLost
        finally:
            client.idle_done()

    def _wait(self, stop: threading.Event, seconds: float) -> None:
        deadline = min(time.monotonic() + seconds, self._session_ends or math.inf)
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            stop.wait(min(remaining, self.settings.lease_seconds / 3))
            if not self._renew_lease():
                raise _LeaseLost

    def _renew_lease(self, *, force: bool = False) -> bool:
        """Renew at a third of the lease time, so one missed renewal never loses it."""
        if not force and time.monotonic() - self._lease_renewed < self.settings.lease_seconds / 3:
            return True
        held = self.lease.acquire()
        if held:
            self._lease_renewed = time.monotonic()
        return held

    # -- one pass ------------------------------------------------------------------------

    def _connect(self) -> IMAPClient:
        client, access = connect(self.settings, self._password, self._token)
        if access is not None:
            self._note_token(access)
        return client

    def _sync(self, client: IMAPClient) -> int:
        self._held_back = False
        delimiter = hierarchy_delimiter(client)
        spooled = sum(
            self._sync_folder(client, folder, delimiter) for folder in self.settings.folders
        )
        now = self._clock.now()
        with self._lock:
            self.status.last_fetch = now
        if self._metrics is not None:
            self._metrics.last_fetch.labels(self.settings.name).set(now.timestamp())
        return spooled

    def _sync_folder(self, client: IMAPClient, folder: str, delimiter: str) -> int:
        name = self.settings.name
        selected = client.select_folder(server_name(folder, delimiter))
        _announced(client)  # the SELECT's own EXISTS is the count, not news
        uidvalidity = int(selected[b"UIDVALIDITY"])
        stored = load_checkpoint(self._db, name, folder)
        last_uid = 0
        if stored is not None and stored.uidvalidity == uidvalidity:
            last_uid = stored.last_uid
        elif stored is not None:
            event(
                log,
                "imap uidvalidity changed",
                logging.WARNING,
                mailbox=name,
                folder=folder,
                old=stored.uidvalidity,
                new=uidvalidity,
            )
        # "UID n:*" always matches the newest message, even below n: filter again.
        uids = sorted(u for u in client.search(["UID", f"{last_uid + 1}:*"]) if u > last_uid)
        if stored != Checkpoint(uidvalidity, last_uid) and not uids:
            save_checkpoint(self._db, name, folder, Checkpoint(uidvalidity, last_uid), self._now())
        spooled = 0
        for batch in _chunks(uids, self.settings.batch_size):
            if not self._accepting():
                self._held_back = True
                break
            # A backlog can take longer than the lease: confirm it before each batch, so an
            # instance that has been taken over stops instead of fetching beside the other.
            if self._leased and not (self._renew_lease() and self.lease.held()):
                raise _LeaseLost
            spooled += self._take(client, folder, batch, delimiter)
            save_checkpoint(self._db, name, folder, Checkpoint(uidvalidity, batch[-1]), self._now())
        return spooled

    def _take(self, client: IMAPClient, folder: str, uids: list[int], delimiter: str) -> int:
        """Spool one batch, then acknowledge it. Returns how many mails were spooled."""
        name = self.settings.name
        sizes = client.fetch(uids, ["RFC822.SIZE"])
        # A UID missing from the answer was expunged by someone else meanwhile.
        present = [u for u in uids if u in sizes]
        too_large = [u for u in present if int(sizes[u][b"RFC822.SIZE"]) > self._max_size]
        wanted = [u for u in present if u not in too_large]
        if too_large:
            self._move(client, too_large, self.settings.too_large_folder, delimiter)
            for uid in too_large:
                event(
                    log,
                    "imap mail too large",
                    logging.WARNING,
                    mailbox=name,
                    folder=folder,
                    uid=uid,
                    size=int(sizes[uid][b"RFC822.SIZE"]),
                    limit=self._max_size,
                    moved_to=self.settings.too_large_folder,
                )
            self._count("too_large", len(too_large))
        if not wanted:
            return 0
        bodies = client.fetch(wanted, ["BODY.PEEK[]"])
        taken = [u for u in wanted if u in bodies and bodies[u].get(b"BODY[]") is not None]
        if not taken:
            return 0
        envelope = Envelope(mail_from=None, rcpt_to=(self.settings.address,))
        mails = [(bytes(bodies[u][b"BODY[]"]), envelope) for u in taken]
        spool_ids = spool.put_many(self._db, mails, "imap", self._now())
        self._count("accepted", len(taken))
        event(
            log,
            "imap spooled",
            mailbox=name,
            folder=folder,
            count=len(taken),
            first_spool_id=spool_ids[0],
            last_spool_id=spool_ids[-1],
        )
        self._on_spooled()
        self._acknowledge(client, taken, delimiter)
        return len(taken)

    def _acknowledge(self, client: IMAPClient, uids: list[int], delimiter: str) -> None:
        after = self.settings.after
        if after == "move":
            self._move(client, uids, self.settings.move_to, delimiter)
        elif after == "flag":
            client.add_flags(uids, [SEEN], silent=True)
        else:
            client.add_flags(uids, [DELETED], silent=True)
            _expunge(client, uids)

    def _move(self, client: IMAPClient, uids: list[int], folder: str, delimiter: str) -> None:
        target = server_name(folder, delimiter)
        if not client.folder_exists(target):
            with contextlib.suppress(IMAPClientError):  # created by a racing instance
                client.create_folder(target)
        if client.has_capability("MOVE"):
            client.move(uids, target)
            return
        client.copy(uids, target)
        client.add_flags(uids, [DELETED], silent=True)
        _expunge(client, uids)

    # -- OAuth2 token lifetimes -------------------------------------------------------------

    def _note_token(self, access: AccessToken) -> None:
        now = self._clock.now()
        self._session_ends = None
        if access.expires_at is not None:
            left = (access.expires_at - now).total_seconds()
            self._session_ends = time.monotonic() + max(left - _TOKEN_MARGIN, 0.0)
        if access.refresh_expires_at is None:
            return
        with self._lock:
            first = self.status.oauth_refresh_expires_at is None
            self.status.oauth_refresh_expires_at = access.refresh_expires_at
        if first and self._metrics is not None:
            self._metrics.refresh_days.labels(self.settings.name).set_function(
                self._refresh_days_left
            )
        self._warn_refresh_expiry()

    def _token_ending(self) -> bool:
        return self._session_ends is not None and time.monotonic() >= self._session_ends

    def _refresh_days_left(self) -> float:
        with self._lock:
            expires = self.status.oauth_refresh_expires_at
        if expires is None:
            return math.nan
        return (expires - self._clock.now()).total_seconds() / 86400

    def _warn_refresh_expiry(self) -> None:
        with self._lock:
            expires = self.status.oauth_refresh_expires_at
        now = self._clock.now()
        if expires is None or expires - now > _REFRESH_WARNING:
            return
        if self._warned_at is not None and now - self._warned_at < _WARN_EVERY:
            return
        self._warned_at = now
        event(
            log,
            "imap oauth refresh token expires soon",
            logging.WARNING,
            mailbox=self.settings.name,
            expires_at=expires.isoformat(),
            days_left=round(self._refresh_days_left(), 1),
        )

    # -- bookkeeping ---------------------------------------------------------------------

    def _now(self) -> datetime:
        return self._clock.now()

    def _set_state(self, state: State) -> None:
        with self._lock:
            self.status.state = state

    def _record_error(self, exc: BaseException) -> ErrorKind:
        kind = classify(exc)
        with self._lock:
            self.status.state = "error"
            self.status.errors[kind] = self.status.errors.get(kind, 0) + 1
            self.status.last_error = f"{kind}: {describe(exc)}"
        if self._metrics is not None:
            self._metrics.errors.labels(self.settings.name, kind).inc()
        return kind

    def _count(self, result: str, n: int) -> None:
        if self._metrics is not None:
            self._metrics.received.labels("imap", result).inc(n)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self.status.as_dict()


def hierarchy_delimiter(client: IMAPClient) -> str:
    """The server's hierarchy separator ("/" at most providers, "." at many Dovecots)."""
    listed = client.list_folders(directory="", pattern="")
    if listed and listed[0][1]:
        value = listed[0][1]
        return value.decode() if isinstance(value, bytes) else str(value)
    return "/"


def _buffered(client: IMAPClient, timeout: float) -> bool:
    """True if the server's words already sit in imaplib's read buffer.

    idle_check() polls the socket, but imaplib reads through a buffered file: an EXISTS
    that arrived in the same packet as the "+ idling" continuation (mail delivered just
    before IDLE began) is already in that buffer, invisible to poll(), and would wait for
    the next IDLE renewal. A non-blocking peek sees it (and anything on the socket).
    """
    reader = getattr(getattr(client, "_imap", None), "file", None)
    if reader is None or not hasattr(reader, "peek"):
        return False
    sock = client.socket()
    sock.setblocking(False)
    try:
        return bool(reader.peek(1))
    except (OSError, ValueError):  # nothing to read (TLS: SSLWantReadError)
        return False
    finally:
        sock.settimeout(timeout)


def _announced(client: IMAPClient) -> bool:
    """Take the EXISTS responses that came with other commands; True if there were any.

    A server announces a new mail once. Mail arriving during a pass is announced in the
    response to a FETCH or MOVE, where imaplib files the EXISTS away unread; IDLE would
    then not hear of that mail until its renewal, up to half an hour later.
    """
    responses = getattr(getattr(client, "_imap", None), "untagged_responses", None)
    return isinstance(responses, dict) and bool(responses.pop("EXISTS", None))


def server_name(folder: str, delimiter: str) -> str:
    """A configured folder name ("/" separated) as the server spells it."""
    return folder.replace("/", delimiter) if delimiter != "/" else folder


def config_name(folder: str, delimiter: str) -> str:
    """A server folder name as the configuration spells it ("/" separated)."""
    return folder.replace(delimiter, "/") if delimiter != "/" else folder


def _expunge(client: IMAPClient, uids: list[int]) -> None:
    # UID EXPUNGE removes only our messages; without UIDPLUS a plain EXPUNGE also removes
    # whatever else a user had marked \Deleted in this folder, which is what they asked for.
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)
    else:
        client.expunge()


def _close(client: IMAPClient) -> None:
    try:
        client.logout()
    except Exception:
        # The connection is already broken; only the socket is left to free.
        with contextlib.suppress(Exception):
            client.shutdown()


# --- all mailboxes ------------------------------------------------------------------------


def password_for(mailbox: ImapSettings, env: dict[str, str] | None = None) -> str:
    """The mailbox password from the config or its environment variable. Raises ConfigError."""
    if mailbox.password is not None:
        return mailbox.password.get_secret_value()
    env = dict(os.environ) if env is None else env
    name = mailbox.password_env or ""
    if name not in env:
        raise ConfigError(
            f"[[imap]] '{mailbox.name}': password_env names {name!r}, which is not set"
        )
    return env[name]


class Pollers:
    """The running pollers; `stop()` ends them, `status()` describes them for /healthz."""

    def __init__(self, pollers: list[Poller]) -> None:
        self.pollers = pollers
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=p.run, args=(self._stop,), name=f"maild-imap-{p.settings.name}", daemon=True
            )
            for p in pollers
        ]

    def start(self) -> Pollers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask every poller to stop and wait for them, at most `timeout` seconds in all.

        A poller blocked on a dead connection may outlive this; its thread is a daemon
        thread and its work is safe to abandon (nothing is acknowledged before a commit).
        """
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def status(self) -> dict[str, dict[str, Any]]:
        return {p.settings.name: p.snapshot() for p in self.pollers}


def instance_id() -> str:
    """Identifies this process as a lease holder: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def make_pollers(
    settings: Settings,
    db: Database,
    clock: Clock,
    on_spooled: Callable[[], None],
    metrics: Metrics | None = None,
    *,
    holder: str | None = None,
    env: dict[str, str] | None = None,
    accepting: Callable[[], bool] = lambda: True,
) -> Pollers:
    """Build (without starting) one poller per `[[imap]]` mailbox. Raises ConfigError."""
    holder = holder or instance_id()
    imap_metrics = _ImapMetrics(metrics) if metrics is not None else None
    return Pollers(
        [
            Poller(
                mailbox,
                password_for(mailbox, env) if mailbox.auth == "password" else "",
                settings.mail.max_message_size,
                db,
                clock,
                on_spooled,
                holder=holder,
                token=token_source(mailbox, db, clock, env) if mailbox.auth == "xoauth2" else None,
                metrics=imap_metrics,
                accepting=accepting,
            )
            for mailbox in settings.imap
        ]
    )


def start_pollers(
    settings: Settings,
    db: Database,
    clock: Clock,
    on_spooled: Callable[[], None],
    metrics: Metrics | None = None,
    *,
    accepting: Callable[[], bool] = lambda: True,
) -> Pollers:
    """Start polling every configured mailbox in its own thread. Raises ConfigError.

    `accepting` (backpressure) is asked before each batch is fetched."""
    pollers = make_pollers(settings, db, clock, on_spooled, metrics, accepting=accepting)
    event(log, "imap started", mailboxes=" ".join(m.name for m in settings.imap))
    return pollers.start()
