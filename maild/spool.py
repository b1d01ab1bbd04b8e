"""The durable queue between receiving and processing.

`put` commits the raw bytes and the envelope; only after it returns may an edge
acknowledge (SMTP 250, IMAP move, `maild ingest` exit 0). `claim_next` takes one
pending row inside the caller's transaction; on PostgreSQL with SKIP LOCKED so several
instances never take the same mail, and a crash simply rolls the claim back.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any, Literal, NamedTuple, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Select,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from maild.db.models import SpoolEntry, SpoolRaw
from maild.db.session import Database
from maild.types import Envelope, SpoolState

_HEADER_LIMIT = 998


def put(db: Database, raw: bytes, envelope: Envelope, source: str, now: datetime) -> int:
    """Store one raw mail and commit. Returns the spool id. Raises TemporaryFailure."""
    return put_many(db, [(raw, envelope)], source, now)[0]


def put_many(
    db: Database,
    mails: list[tuple[bytes, Envelope]],
    source: str,
    now: datetime,
    *,
    durable: bool = True,
) -> list[int]:
    """Store several raw mails in one commit (bulk import). Returns their spool ids.

    `durable=False` commits without waiting for the disk; a later durable commit (of
    this database, from any writer) makes these rows durable too, since both databases
    write their log in commit order. Nothing may be acknowledged before that.
    """
    if not mails:
        return []  # an empty parameter list would insert one row of defaults
    with db.begin(replayable=not durable) as conn:
        # Core, not ORM objects: this runs before every 250, and the unit of work added
        # almost half again to the cost of writing the bytes.
        ids = list(
            conn.execute(
                _PUT, [_entry(raw, envelope, source, now) for raw, envelope in mails]
            ).scalars()
        )
        conn.execute(
            insert(SpoolRaw),
            [{"spool_id": id_, "raw": raw} for id_, (raw, _) in zip(ids, mails, strict=True)],
        )
        return ids


_PUT = insert(SpoolEntry).returning(SpoolEntry.id, sort_by_parameter_order=True)


def _entry(raw: bytes, envelope: Envelope, source: str, now: datetime) -> dict[str, Any]:
    # No parsing here: this runs before the 250. The listing columns (From, Subject,
    # Message-ID) are filled in when the mail is processed.
    return {
        "received_at": now,
        "source": source,
        "envelope": asdict(envelope),
        "size": len(raw),
        "state": SpoolState.PENDING,
        "attempts": 0,
    }


def raw_of(conn: Connection | Session, spool_id: int) -> bytes | None:
    """The bytes of one spooled mail, as received."""
    return conn.scalar(select(SpoolRaw.raw).where(SpoolRaw.spool_id == spool_id))


class Claimed(NamedTuple):
    """A pending mail locked by the caller's transaction. `raw` only when asked for."""

    id: int
    envelope: Envelope
    raw: bytes | None
    received_at: datetime


def claim_next(conn: Connection, *, after_id: int = 0, with_raw: bool = True) -> Claimed | None:
    """Lock and return the oldest pending mail with an id above `after_id`, or None."""
    return _claim(conn, "next", {"after": after_id}, with_raw)


def claim(conn: Connection, spool_id: int, *, with_raw: bool = True) -> Claimed | None:
    """Lock one pending mail by id, or None if it is gone, done, or taken by another worker."""
    return _claim(conn, "id", {"id": spool_id}, with_raw)


def _claim_query(where: ColumnElement[bool], with_raw: bool, lock: bool) -> Select[Any]:
    columns: list[Any] = [SpoolEntry.id, SpoolEntry.envelope, SpoolEntry.received_at]
    if with_raw:
        columns.append(SpoolRaw.raw)
    query = select(*columns)
    if with_raw:
        query = query.join(SpoolRaw, SpoolRaw.spool_id == SpoolEntry.id)
    query = (
        query.where(SpoolEntry.state == SpoolState.PENDING, where).order_by(SpoolEntry.id).limit(1)
    )
    # SKIP LOCKED: several instances never take the same mail (PostgreSQL only).
    return query.with_for_update(of=SpoolEntry, skip_locked=True) if lock else query


# Built once per shape; claiming runs for every mail.
_CLAIMS = {
    (where_key, with_raw, lock): _claim_query(where, with_raw, lock)
    for where_key, where in (
        ("next", SpoolEntry.id > bindparam("after")),
        ("id", SpoolEntry.id == bindparam("id")),
    )
    for with_raw in (True, False)
    for lock in (True, False)
}


def _claim(
    conn: Connection, where: Literal["next", "id"], params: dict[str, int], with_raw: bool
) -> Claimed | None:
    lock = conn.dialect.name == "postgresql"
    query = _CLAIMS[where, with_raw, lock]
    row = conn.execute(query, params).first()
    if row is None:
        return None
    stored = row.envelope
    envelope = Envelope(**{**stored, "rcpt_to": tuple(stored.get("rcpt_to", ()))})
    return Claimed(row.id, envelope, row.raw if with_raw else None, row.received_at)


class Summary(NamedTuple):
    """What listings show of a mail: From, Subject, Message-ID."""

    from_: str | None
    subject: str | None
    message_id: str | None


def finish(
    conn: Connection,
    spool_id: int,
    state: SpoolState,
    now: datetime,
    summary: Summary,
    *,
    step: str | None = None,
    reason: str | None = None,
) -> bool:
    """Record the outcome of a pending mail; False if it was not pending (nothing changed)."""
    result = conn.execute(
        _FINISH,
        {
            "spool_id": spool_id,
            "state_": state,
            "step_": step,
            "reason_": None if reason is None else _no_nul(reason),
            "at": now,
            "from_": _clip(summary.from_),
            "subject_": _clip(summary.subject),
            "message_id_": _clip(summary.message_id),
        },
    )
    return result.rowcount == 1


def _clip(value: str | None) -> str | None:
    return None if value is None else _no_nul(value[:_HEADER_LIMIT])


def _no_nul(text: str) -> str:
    # PostgreSQL text takes no NUL; a hostile header must not keep its mail from
    # being recorded.
    return text.replace("\x00", "\ufffd")


_FINISH = (
    update(SpoolEntry)
    .where(SpoolEntry.id == bindparam("spool_id"), SpoolEntry.state == SpoolState.PENDING)
    .values(
        state=bindparam("state_"),
        step=bindparam("step_"),
        reason=bindparam("reason_"),
        processed_at=bindparam("at"),
        header_from=bindparam("from_"),
        header_subject=bindparam("subject_"),
        header_message_id=bindparam("message_id_"),
        attempts=SpoolEntry.attempts + 1,
    )
)


def requeue(
    session: Session,
    spool_ids: list[int] | None,
    state: SpoolState = SpoolState.QUARANTINED,
) -> int:
    """Put mail in `state` back to pending (all of it when `spool_ids` is None)."""
    statement = update(SpoolEntry).where(SpoolEntry.state == state)
    if spool_ids is not None:
        statement = statement.where(SpoolEntry.id.in_(spool_ids))
    result = cast(
        CursorResult[Any],
        session.execute(
            statement.values(state=SpoolState.PENDING, step=None, reason=None),
            execution_options={"synchronize_session": False},
        ),
    )
    return result.rowcount


def depth(session: Session) -> tuple[int, datetime | None]:
    """Pending count and the oldest pending receive time."""
    count, oldest = session.execute(
        select(func.count(), func.min(SpoolEntry.received_at)).where(
            SpoolEntry.state == SpoolState.PENDING
        )
    ).one()
    return int(count), oldest


def count_pending(session: Session, cap: int) -> int:
    """Pending mails, counted up to `cap`: the cost stays bounded however deep the spool
    (backpressure reads it every second)."""
    pending = select(SpoolEntry.id).where(SpoolEntry.state == SpoolState.PENDING).limit(cap)
    return int(session.scalar(select(func.count()).select_from(pending.subquery())) or 0)


def summarise(raw: bytes) -> Summary:
    """From, Subject and Message-ID of a mail the parser could not read; never fails."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:65536])
    values = [headers.get(name) for name in ("from", "subject", "message-id")]
    from_, subject, message_id = (None if v is None else _decode(v) for v in values)
    return Summary(from_, subject, message_id)


def _decode(value: object) -> str:
    try:
        return str(make_header(decode_header(str(value)))).replace("\n", " ").strip()
    except (HeaderParseError, ValueError, LookupError):
        return str(value).replace("\n", " ").strip()


def count_quarantined(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).where(SpoolEntry.state == SpoolState.QUARANTINED)) or 0
    )


class Peeked(NamedTuple):
    id: int
    raw: bytes


def peek(db: Database, *, spool_id: int | None = None, after_id: int = 0) -> Peeked | None:
    """A pending mail (that id, or the oldest after `after_id`), read without claiming it."""
    query = (
        select(SpoolEntry.id, SpoolRaw.raw)
        .join(SpoolRaw, SpoolRaw.spool_id == SpoolEntry.id)
        .where(SpoolEntry.state == SpoolState.PENDING, SpoolEntry.id > after_id)
    )
    if spool_id is not None:
        query = query.where(SpoolEntry.id == spool_id)
    with db.read() as session:
        row = session.execute(query.order_by(SpoolEntry.id).limit(1)).first()
    return None if row is None else Peeked(row[0], row[1])


def peek_many(db: Database, *, after_id: int, limit: int, max_bytes: int) -> list[Peeked]:
    """The oldest pending mails after `after_id`, unclaimed: at most `limit` of them, and
    past the first, no more than `max_bytes` of raw mail in all."""
    with db.read() as session:
        sizes = session.execute(
            select(SpoolEntry.id, SpoolEntry.size)
            .where(SpoolEntry.state == SpoolState.PENDING, SpoolEntry.id > after_id)
            .order_by(SpoolEntry.id)
            .limit(limit)
        ).all()
        chosen: list[int] = []
        total = 0
        for spool_id, size in sizes:
            if chosen and total + size > max_bytes:
                break
            chosen.append(spool_id)
            total += size
        if not chosen:
            return []
        rows = session.execute(
            select(SpoolEntry.id, SpoolRaw.raw)
            .join(SpoolRaw, SpoolRaw.spool_id == SpoolEntry.id)
            .where(SpoolEntry.id.in_(chosen), SpoolEntry.state == SpoolState.PENDING)
            .order_by(SpoolEntry.id)
        ).all()
    return [Peeked(row[0], row[1]) for row in rows]
