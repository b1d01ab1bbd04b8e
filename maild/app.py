"""The one place that builds and wires everything from settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import OperationalError

from maild.clock import Clock, SystemClock
from maild.config import Settings
from maild.db import migrate
from maild.db.session import Database
from maild.errors import TemporaryFailure
from maild.numbering import Numbering
from maild.pipeline.process import Processor
from maild.rules import Directory, RuleHolder, RuleSet
from maild.sla.policy import SlaHolder
from maild.sla.track import SlaTracker


def load_rule_holder(directory: Path) -> RuleHolder:
    """The rules in `directory`; without that directory, no rules (every default applies).

    Raises RuleError (naming file:line) when the rules are broken: maild does not start
    with rules it cannot follow. A running daemon keeps its last good set instead.
    """
    if not directory.exists():
        return RuleHolder(directory, RuleSet((), Directory(), ()))
    return RuleHolder.load(directory)


class SchemaOutOfDate(TemporaryFailure):
    """The database schema is older than this maild; `maild db upgrade` fixes it."""


@dataclass
class App:
    settings: Settings
    clock: Clock = field(default_factory=SystemClock)

    def __post_init__(self) -> None:
        self.db = Database(
            self.settings.database.url,
            busy_timeout_ms=self.settings.database.sqlite_busy_timeout_ms,
            connect_timeout=self.settings.database.connect_timeout,
        )
        self.numbering = Numbering(self.settings.tickets)
        self._rules: RuleHolder | None = None
        self._sla: SlaHolder | None = None
        self.sla_tracker = SlaTracker(lambda: self.sla.current)
        self.processor = Processor(
            self.db, self.settings, self.clock, lambda: self.rules.current, self.sla_tracker
        )

    @property
    def rules(self) -> RuleHolder:
        """The routing rules, loaded on first use: reading tickets needs no rules, and a
        broken rules file must not lock the operator out of the read commands."""
        if self._rules is None:
            self._rules = load_rule_holder(self.settings.paths.rules)
        return self._rules

    @property
    def sla(self) -> SlaHolder:
        """The SLA policies (rules/sla.yaml), loaded on first use like the rules; they
        follow edits of the file by themselves. Broken policies leave none in force (mail
        is still filed); commands that accept mail refuse to start on them."""
        if self._sla is None:
            self._sla = SlaHolder.open(self.settings.paths.rules)
        return self._sla

    def prepare_schema(self) -> None:
        """Upgrade embedded SQLite on start; PostgreSQL is upgraded by the operator."""
        try:
            if self.db.engine.dialect.name == "sqlite":
                if not migrate.at_head(self.db.engine):
                    with self.db.begin() as connection:
                        created = migrate.create_fresh(connection)
                    if not created:
                        migrate.upgrade(self.db.engine)
            elif not migrate.is_up_to_date(self.db.engine):
                raise SchemaOutOfDate("the database schema is not current: run `maild db upgrade`")
        except OperationalError as exc:
            raise TemporaryFailure(f"database unavailable: {exc.orig}") from exc

    def close(self) -> None:
        self.db.dispose()
