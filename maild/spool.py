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
from typing import Any, NamedTuple, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from maild.db.models import SpoolEntry
from maild.db.session import Database
from maild.types import Envelope, SpoolState

_HEADER_LIMIT = 998


def put(db: Database, raw: bytes, envelope: Envelope, source: str, now: datetime) -> int:
    """Store one raw mail and commit. Returns the spool id. Raises TemporaryFailure."""
    summary = _summarise(raw)
    with db.transaction() as session:
        entry = SpoolEntry(
            received_at=now,
            source=source,
            envelope=asdict(envelope),
            raw=raw,
            size=len(raw),
            state=SpoolState.PENDING,
            attempts=0,
            header_from=summary["from"],
            header_subject=summary["subject"],
            header_message_id=summary["message-id"],
        )
        session.add(entry)
        session.flush()
        return entry.id


def claim_next(session: Session, *, after_id: int = 0) -> SpoolEntry | None:
    """Lock and return the oldest pending mail with an id above `after_id`, or None."""
    query = (
        select(SpoolEntry)
        .where(SpoolEntry.state == SpoolState.PENDING, SpoolEntry.id > after_id)
        .order_by(SpoolEntry.id)
        .limit(1)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return session.scalars(query).first()


def claim(session: Session, spool_id: int) -> SpoolEntry | None:
    """Lock one pending mail by id, or None if it is gone, done, or taken by another worker."""
    query = select(SpoolEntry).where(
        SpoolEntry.id == spool_id, SpoolEntry.state == SpoolState.PENDING
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return session.scalars(query).first()


def finish(
    entry: SpoolEntry,
    state: SpoolState,
    now: datetime,
    *,
    step: str | None = None,
    reason: str | None = None,
) -> None:
    entry.state = state
    entry.step = step
    entry.reason = reason
    entry.processed_at = now
    entry.attempts += 1


def requeue(session: Session, spool_ids: list[int] | None) -> int:
    """Put quarantined mail back to pending (all of it when `spool_ids` is None)."""
    statement = update(SpoolEntry).where(SpoolEntry.state == SpoolState.QUARANTINED)
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


def _summarise(raw: bytes) -> dict[str, str | None]:
    """From, Subject and Message-ID for listings, read cheaply and never failing."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:65536])
    result: dict[str, str | None] = {}
    for name in ("from", "subject", "message-id"):
        value = headers.get(name)
        result[name] = _decode(value)[:_HEADER_LIMIT] if value is not None else None
    return result


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
    query = select(SpoolEntry.id, SpoolEntry.raw).where(
        SpoolEntry.state == SpoolState.PENDING, SpoolEntry.id > after_id
    )
    if spool_id is not None:
        query = query.where(SpoolEntry.id == spool_id)
    with db.transaction() as session:
        row = session.execute(query.order_by(SpoolEntry.id).limit(1)).first()
    return None if row is None else Peeked(row[0], row[1])
