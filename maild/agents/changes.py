"""What an agent's commands do to a ticket. Pure: the current fields in, changes out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from maild.agents.commands import Command
from maild.rules.teams import Directory
from maild.types import TicketStatus


@dataclass(frozen=True, slots=True)
class TicketState:
    status: str
    priority: str
    tier: int | None
    queue: str | None
    type: str | None
    tags: tuple[str, ...]
    assignee: str | None
    team: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    """Ticket columns to set and events to record (kind, data), in command order."""

    changes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]


_FIELDS = {"priority": "priority", "queue": "queue", "type": "type"}


def plan(
    state: TicketState,
    commands: tuple[Command, ...],
    directory: Directory,
    *,
    replied: bool,
    now: datetime,
) -> Plan:
    """Changes for `commands`; `replied` (the agent answered the customer) moves a new
    ticket to open unless a command sets the status."""
    changes: dict[str, Any] = {}
    events: list[tuple[str, dict[str, Any]]] = []
    tags = list(state.tags)
    for command in commands:
        value = command.value
        events.append(("agent_command", {"command": command.line}))
        if command.name == "status":
            changes["status"] = value[0]
        elif command.name in _FIELDS:
            changes[_FIELDS[command.name]] = value[0]
        elif command.name == "tier":
            changes["tier"] = int(value[0])
        elif command.name == "tag":
            for change in value:
                name = change[1:]
                if change[0] == "+" and name not in tags:
                    tags.append(name)
                elif change[0] == "-" and name in tags:
                    tags.remove(name)
            changes["tags"] = tags
        elif command.name == "assign" and value[0] == "agent":
            changes.update(assignee=value[1], assigned_at=now)
            events.append(("assigned", {"agent": value[1], "why": command.line}))
        elif command.name == "assign":
            team = directory.teams[value[1]]
            # The team takes it over: whoever had it gives it up.
            changes.update(team=team.name, tier=team.tier, assignee=None, assigned_at=None)
            events.append(("assigned", {"team": team.name, "agent": None, "why": command.line}))
    status = changes.get("status")
    why = "agent command"
    if status is None and replied and state.status == TicketStatus.NEW:
        status, why = TicketStatus.OPEN.value, "agent replied"
        changes["status"] = status
    if status is not None and status != state.status:
        events.append(("status_changed", {"from": state.status, "to": status, "why": why}))
    return Plan(changes, events)
