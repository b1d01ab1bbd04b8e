"""`maild ingest` at speed: read, spool, parse in other processes, file, in order.

Parsing starts before the rest of maild is loaded: `BulkIngest.start` is called with
only the settings and the parser imported, forks the parse processes and hands them the
first mails, and the database and pipeline stack (a third of a second of imports) loads
while they parse. Nothing is filed before its spool commit: the mails parsed early are
spooled first thing once the database is there, and every later batch is spooled before
it goes out to be parsed.

Only the last spool commit waits for the disk. It makes every earlier one durable with
it (one log, written in commit order) before the exit status says the mails are safe; a
power cut before that loses only mails not yet reported, which a second run files (and
recognises as duplicates those filed already).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

from maild.config import Settings
from maild.errors import TemporaryFailure
from maild.pipeline.limits import MailLimits
from maild.pipeline.parse import Parsed
from maild.pipeline.parse_ahead import ParseAhead
from maild.pipeline.thread import ThreadKeys, may_thread, thread_keys
from maild.receive.ingest import Incoming, check_inputs, read_inputs
from maild.types import Envelope, ParsedMail, SpoolState

if TYPE_CHECKING:
    from maild.app import App
    from maild.spool import Claimed

# Mails spooled per commit (or bytes, whichever comes first). Each mail is still filed in
# a transaction of its own.
SPOOL_BATCH = 64
SPOOL_BATCH_BYTES = 8 * 1024 * 1024
# Mails handed to a parse process at a time. Each hand-off waits for the pool's feeder
# thread to get the GIL from the filing, and parsing is the slower half: at 16 a batch
# the parse process stood idle for 0.29-0.47 s of a 3 s import, at 32 for 0.31-0.36 s.
# Much more would keep the first results (and the filing) waiting.
PARSE_BATCH = 32
# Batches in flight: enough to keep the parse processes busy for as long as the rest of
# maild takes to load (bench/ingest.py), and a bound on the memory they take.
PARSE_WINDOW = 8


class BulkIngest:
    def __init__(self, settings: Settings, paths: list[str]) -> None:
        """Raises MissingInput, before anything is read, if a path does not exist."""
        check_inputs(paths)
        self._ahead: ParseAhead[int] = ParseAhead(
            limits=MailLimits.of(settings.mail), window=PARSE_WINDOW
        )
        self._inputs = _with_last(read_inputs(paths))
        self._next = 0
        # Read and parsing, not spooled yet: (sequence number, raw, last of all).
        self._unspooled: list[tuple[int, bytes, bool]] = []
        # The spool rows written, by sequence number, as the processor would read them back.
        self._spooled: dict[int, Claimed] = {}
        # Auto-replies and bounces that came before their conversation: their spool ids
        # and what threading looks them up by (not the mails: a mailbox of bounces
        # would otherwise be held in memory, parsed).
        self._unthreaded: list[tuple[int, ThreadKeys]] = []
        self.results: Counter[str] = Counter()

    def start(self) -> None:
        """Hand the first mails out to be parsed; needs nothing but the settings."""
        while len(self._unspooled) < PARSE_WINDOW * PARSE_BATCH:
            batch = self._read(PARSE_BATCH)
            if not batch:
                return
            self._submit_quietly(batch)

    def run(self, app: App, out: TextIO) -> None:
        """Spool, parse and file everything; a summary line goes to `out`."""
        from maild.db.checkpoint import Checkpointer  # the database stack: see the top

        try:
            with Checkpointer(app.db.engine), app.db.pinned():
                self._spool(app, self._unspooled)
                self._unspooled = []
                while batch := self._read(SPOOL_BATCH, SPOOL_BATCH_BYTES):
                    self._spool(app, batch)
                    for start in range(0, len(batch), PARSE_BATCH):
                        for done in self._ahead.submit(
                            *_columns(batch[start : start + PARSE_BATCH])
                        ):
                            self._file(app, *done)
                for done in self._ahead.finish():
                    self._file(app, *done)
                self._file_unthreaded_again(app)
        finally:
            self.close()
        try:
            for outcome in app.processor.drain():  # leftovers of an earlier interrupted run
                self.results[outcome.state.value] += 1
        except TemporaryFailure as exc:
            print(f"maild: pending mail left in the spool: {exc}", file=sys.stderr)
        summary = ", ".join(f"{key} {value}" for key, value in sorted(self.results.items()))
        print(f"ingest: {summary or 'nothing to do'}", file=out)

    def close(self) -> None:
        self._ahead.close()

    def _read(self, count: int, size: int | None = None) -> list[tuple[int, bytes, bool]]:
        batch: list[tuple[int, bytes, bool]] = []
        total = 0
        for incoming, last in self._inputs:
            batch.append((self._next, incoming.raw, last))
            self._next += 1
            total += len(incoming.raw)
            if len(batch) >= count or (size is not None and total >= size):
                break
        return batch

    def _submit_quietly(self, batch: list[tuple[int, bytes, bool]]) -> None:
        # Within the window nothing is handed back yet, and nothing may be: no mail is
        # spooled at this point.
        handed_back = list(self._ahead.submit(*_columns(batch)))
        assert not handed_back
        self._unspooled += batch

    def _spool(self, app: App, batch: list[tuple[int, bytes, bool]]) -> None:
        from maild import spool  # the database stack: see the top

        if not batch:
            return
        now = app.clock.now()
        envelope = Envelope()
        ids = spool.put_many(
            app.db, [(raw, envelope) for _, raw, _ in batch], "ingest", now, durable=batch[-1][2]
        )
        self._spooled.update(
            (number, spool.Claimed(id_, envelope, None, now))
            for (number, _, _), id_ in zip(batch, ids, strict=True)
        )
        self.results["spooled"] += len(ids)

    def _file_unthreaded_again(self, app: App) -> None:
        """Give the auto-replies and bounces that threaded to no ticket a second look, now
        that every mail of the import is in: in a directory sorted by file name an
        auto-reply can come before the mail it answers. Only those that a mail filed
        since could give a ticket are filed again, parsed anew from the spool."""
        if not self._unthreaded:
            return
        from maild import spool  # the database stack: see the top
        from maild.db.queries import SqlThreadIndex

        unthreaded, self._unthreaded = self._unthreaded, []
        with app.db.read() as session:
            index = SqlThreadIndex(session.connection())
            again = [spool_id for spool_id, keys in unthreaded if may_thread(keys, index)]
        if not again:
            return
        with app.db.transaction(replayable=True) as session:
            self.results["ignored"] -= spool.requeue(session, again, SpoolState.IGNORED)
        for spool_id in again:
            self._file_spooled(app, spool_id, None, again=True)

    def _file(self, app: App, number: int, parsed: Parsed) -> None:
        entry = self._spooled.pop(number)
        self._file_spooled(app, entry.id, parsed, entry)

    def _file_spooled(
        self,
        app: App,
        spool_id: int,
        parsed: Parsed | None,
        entry: Claimed | None = None,
        again: bool = False,
    ) -> None:
        """`parsed` None: parsed here, from the spool."""
        try:
            outcome = app.processor.process(spool_id, parsed, entry)
        except TemporaryFailure as exc:
            # The mail is safe in the spool; the next ingest or `maild run` processes it.
            print(f"maild: spooled as {spool_id}, not processed: {exc}", file=sys.stderr)
            self.results["pending"] += 1
            return
        if outcome is not None:
            self.results[outcome.state.value] += 1
            if outcome.unthreaded and not again:
                assert isinstance(parsed, ParsedMail)  # only a parsed mail threads nowhere
                self._unthreaded.append((spool_id, thread_keys(parsed, app.numbering)))


def _columns(batch: list[tuple[int, bytes, bool]]) -> tuple[list[int], list[bytes]]:
    return [number for number, _, _ in batch], [raw for _, raw, _ in batch]


def _with_last(items: Iterator[Incoming]) -> Iterator[tuple[Incoming, bool]]:
    """Each mail, and whether it is the last one."""
    current = next(items, None)
    if current is None:
        return
    for following in items:
        yield current, False
        current = following
    yield current, True
