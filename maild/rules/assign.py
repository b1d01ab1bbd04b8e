"""Choosing the agent for an assignment request, with the data it needs behind a Protocol.

Routing decides *how* to assign (pure); this picks *whom*, from the team's active
members with the skill and language asked for, using counts the database keeps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from maild.rules.decision import AssignRequest
from maild.rules.teams import Directory


class AgentLoad(Protocol):
    """What assignment needs to know about the agents' current work."""

    def open_tickets(self, agent_address: str) -> int:
        """Tickets assigned to the agent that are not resolved or closed."""
        ...

    def last_assigned(self, team: str) -> str | None:
        """The agent who got the team's most recent assignment, if any."""
        ...


@dataclass
class InMemoryAgentLoad:
    """An AgentLoad kept in memory (tests, `maild rules test`); `record` what was chosen."""

    open: Counter[str] = field(default_factory=Counter)
    last: dict[str, str] = field(default_factory=dict)

    def open_tickets(self, agent_address: str) -> int:
        return self.open[agent_address]

    def last_assigned(self, team: str) -> str | None:
        return self.last.get(team)

    def record(self, team: str | None, agent: str) -> None:
        self.open[agent] += 1
        if team is not None:
            self.last[team] = agent


@dataclass(frozen=True, slots=True)
class Assignment:
    agent: str | None
    note: str  # why this agent, or why nobody: for the ticket's event log


def choose_agent(request: AssignRequest, directory: Directory, load: AgentLoad) -> Assignment:
    """The agent to assign.

    round_robin: the next eligible member after the team's last assignee, in team order.
    least_loaded: the eligible member with the fewest open tickets; ties go to the one
    round robin would pick first, so equal loads still rotate.
    Nobody eligible (everyone inactive since the rules were loaded): no agent.
    """
    if request.agent is not None:
        agent = directory.agents.get(request.agent)
        if agent is None or not agent.active:
            return Assignment(None, f"agent {request.agent} is not an active agent")
        return Assignment(agent.address, "named by the rule")
    team = directory.teams.get(request.team or "")
    if team is None:
        return Assignment(None, f"unknown team {request.team}")
    eligible = {
        a.address
        for a in directory.members(team.name, skill=request.skill, language=request.language)
    }
    if not eligible:
        return Assignment(None, f"no eligible member in team {team.name}")
    last = load.last_assigned(team.name)
    start = team.members.index(last) + 1 if last in team.members else 0
    rotation = [
        member for member in team.members[start:] + team.members[:start] if member in eligible
    ]
    if request.by == "round_robin":
        return Assignment(rotation[0], f"round robin in team {team.name}")
    counts = {member: load.open_tickets(member) for member in rotation}
    chosen = min(rotation, key=lambda member: counts[member])  # min keeps the first of ties
    return Assignment(chosen, f"least loaded in team {team.name} ({counts[chosen]} open tickets)")
