"""What one `maild run` instance does: receive, process, send, or all of it.

Instances sharing a PostgreSQL database split the work by role (receivers at the edge,
processors behind them); the database, not the instances, coordinates who does what.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Roles:
    receive: bool  # listeners and IMAP pollers: mail into the spool
    process: bool  # processing workers and the SLA sweep
    send: bool  # the outbox sender

    def __str__(self) -> str:
        return " ".join(name for name in ("receive", "process", "send") if getattr(self, name))


ROLES = {
    "receive": Roles(receive=True, process=False, send=False),
    "process": Roles(receive=False, process=True, send=False),
    "send": Roles(receive=False, process=False, send=True),
    "all": Roles(receive=True, process=True, send=True),
}
