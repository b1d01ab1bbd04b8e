"""Teams and agents from `teams.yaml`: who can be assigned, and who is an agent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from maild.rules.errors import RuleIssue
from maild.rules.schema import AgentEntry, TeamEntry, suggest, suggest_address, validate
from maild.rules.yamldoc import Document

TEAMS_FILE = "teams.yaml"

E = TypeVar("E", TeamEntry, AgentEntry)


@dataclass(frozen=True, slots=True)
class Agent:
    address: str
    name: str
    teams: tuple[str, ...]
    skills: frozenset[str]
    languages: frozenset[str]
    active: bool


@dataclass(frozen=True, slots=True)
class Team:
    """`members`: in file order, the team's `members` list, then agents naming the team."""

    name: str
    tier: int
    lead: str | None
    members: tuple[str, ...]


@dataclass(frozen=True)
class Directory:
    teams: Mapping[str, Team] = field(default_factory=dict)
    agents: Mapping[str, Agent] = field(default_factory=dict)

    def is_agent(self, address: str) -> bool:
        return address.lower() in self.agents

    def members(
        self, team: str, *, skill: str | None = None, language: str | None = None
    ) -> tuple[Agent, ...]:
        """Active members of `team` with the skill and language asked for, in team order."""
        found = self.teams.get(team)
        if found is None:
            return ()
        agents = (self.agents[a] for a in found.members)
        return tuple(
            a
            for a in agents
            if a.active
            and (skill is None or skill in a.skills)
            and (language is None or language in a.languages)
        )


@dataclass(frozen=True)
class Names:
    """Every team name and agent address written in teams.yaml, in a valid entry or not:
    what references in routing files are checked against, so that one bad team entry
    does not also make every mention of that team an error."""

    teams: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()


def build_directory(doc: Document, issues: list[RuleIssue]) -> tuple[Directory | None, Names]:
    """Validate teams.yaml. The directory is None (after adding issues) if anything is wrong."""
    before = len(issues)
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        issues.append(doc.issue((), "expected a mapping with `teams:` and `agents:`"))
        return None, Names()
    for key in data:
        if key not in ("teams", "agents"):
            message = f"unknown key '{key}'{suggest(key, ('teams', 'agents'))}"
            if key == "rules":
                message = "rules belong in a routing file (like routing.yaml), not in teams.yaml"
            issues.append(doc.issue((key,), message, key=True))
    teams = _entries(doc, data, "teams", TeamEntry, issues)
    agents = _entries(doc, data, "agents", AgentEntry, issues)

    # Names of entries that failed validation still count as known, so a bad tier does
    # not also turn every mention of that team into an "unknown team".
    agent_at = _raw_names(data, "agents", "address")
    team_at = _raw_names(data, "teams", "name")
    for i, agent in agents:
        if agent_at.get(agent.address, i) != i:
            issues.append(
                doc.issue(("agents", i, "address"), f"agent {agent.address} is listed twice")
            )
    for i, team in teams:
        if team_at.get(team.name, i) != i:
            issues.append(doc.issue(("teams", i, "name"), f"team '{team.name}' is listed twice"))

    members: dict[str, list[str]] = {name: [] for name in team_at}
    for i, team in teams:
        if team.lead is not None and team.lead not in agent_at:
            issues.append(doc.issue(("teams", i, "lead"), _unknown("agent", team.lead, agent_at)))
        for j, address in enumerate(team.members):
            if address not in agent_at:
                issues.append(
                    doc.issue(("teams", i, "members", j), _unknown("agent", address, agent_at))
                )
            elif address not in members[team.name]:
                members[team.name].append(address)
    for i, agent in agents:
        for j, name in enumerate(agent.teams):
            if name not in members:
                issues.append(doc.issue(("agents", i, "teams", j), _unknown("team", name, team_at)))
            elif agent.address not in members[name]:
                members[name].append(agent.address)
    names = Names(frozenset(team_at), frozenset(agent_at))
    if len(issues) > before:
        return None, names
    directory = Directory(
        teams={
            team.name: Team(team.name, team.tier, team.lead, tuple(members[team.name]))
            for _, team in teams
        },
        agents={
            agent.address: Agent(
                address=agent.address,
                name=agent.name,
                teams=tuple(t for t, m in members.items() if agent.address in m),
                skills=frozenset(agent.skills),
                languages=frozenset(agent.languages),
                active=agent.active,
            )
            for _, agent in agents
        },
    )
    return directory, names


def _raw_names(data: dict[str, object], section: str, key: str) -> dict[str, int]:
    """Where each name first appears in a section, valid entry or not."""
    found: dict[str, int] = {}
    entries = data.get(section)
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        name = entry.get(key) if isinstance(entry, dict) else None
        if isinstance(name, str):
            found.setdefault(name.strip().lower() if key == "address" else name.strip(), i)
    return found


def _unknown(kind: str, name: str, known: Mapping[str, object]) -> str:
    hint = suggest_address(name, known) if kind == "agent" else suggest(name, known)
    return f"unknown {kind} '{name}'{hint}"


def _entries(
    doc: Document, data: dict[str, object], key: str, model: type[E], issues: list[RuleIssue]
) -> list[tuple[int, E]]:
    raw = data.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        issues.append(doc.issue((key,), f"`{key}` must be a list"))
        return []
    found: list[tuple[int, E]] = []
    for i, item in enumerate(raw):
        entry = validate(model, item, doc, (key, i), issues)
        if entry is not None:
            found.append((i, entry))
    return found
