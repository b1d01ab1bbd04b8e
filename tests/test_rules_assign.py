"""Choosing an agent: round robin and least loaded across a team, with the load counted
by an in-memory AgentLoad (the daemon's counts open tickets in the database)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from maild.rules import Directory, InMemoryAgentLoad, choose_agent, load_rules
from maild.rules.decision import AssignRequest

TEAMS = """
teams:
  - name: network
    tier: 2
    members: [david@example.com, eva@example.com, ferenc@example.com]
agents:
  - {address: david@example.com, skills: [vpn], languages: [en]}
  - {address: eva@example.com, skills: [vpn, dns], languages: [hu, en]}
  - {address: ferenc@example.com, languages: [hu]}
  - {address: gone@example.com, teams: [network], active: false}
  - {address: late@example.com, teams: [network], skills: [vpn]}
"""


@pytest.fixture
def directory(tmp_path: Path) -> Directory:
    (tmp_path / "teams.yaml").write_text(textwrap.dedent(TEAMS), encoding="utf-8")
    return load_rules(tmp_path).directory


def assign_many(
    directory: Directory, request: AssignRequest, load: InMemoryAgentLoad, times: int
) -> list[str]:
    chosen = []
    for _ in range(times):
        agent = choose_agent(request, directory, load).agent
        assert agent is not None
        load.record(request.team, agent)
        chosen.append(agent)
    return chosen


def test_team_members_in_file_order_skip_inactive(directory: Directory) -> None:
    assert directory.teams["network"].members == (
        "david@example.com",
        "eva@example.com",
        "ferenc@example.com",
        "gone@example.com",
        "late@example.com",
    )
    assert [a.address for a in directory.members("network")] == [
        "david@example.com",
        "eva@example.com",
        "ferenc@example.com",
        "late@example.com",
    ]


def test_round_robin_goes_round_the_team(directory: Directory) -> None:
    load = InMemoryAgentLoad()
    chosen = assign_many(directory, AssignRequest(team="network"), load, 5)
    assert chosen == [
        "david@example.com",
        "eva@example.com",
        "ferenc@example.com",
        "late@example.com",
        "david@example.com",
    ]


def test_round_robin_continues_after_the_last_assignee(directory: Directory) -> None:
    load = InMemoryAgentLoad(last={"network": "eva@example.com"})
    assert choose_agent(AssignRequest(team="network"), directory, load).agent == (
        "ferenc@example.com"
    )
    # The last assignee has left the team since: start from the top.
    load = InMemoryAgentLoad(last={"network": "someone@example.com"})
    assert choose_agent(AssignRequest(team="network"), directory, load).agent == (
        "david@example.com"
    )


def test_round_robin_with_a_skill_rotates_among_those_who_have_it(directory: Directory) -> None:
    load = InMemoryAgentLoad()
    request = AssignRequest(team="network", skill="vpn")
    assert assign_many(directory, request, load, 4) == [
        "david@example.com",
        "eva@example.com",
        "late@example.com",
        "david@example.com",
    ]


def test_language_requirement(directory: Directory) -> None:
    load = InMemoryAgentLoad()
    request = AssignRequest(team="network", language="hu")
    assert assign_many(directory, request, load, 3) == [
        "eva@example.com",
        "ferenc@example.com",
        "eva@example.com",
    ]


def test_least_loaded_counts_open_tickets(directory: Directory) -> None:
    load = InMemoryAgentLoad()
    load.open.update(
        {
            "david@example.com": 5,
            "eva@example.com": 2,
            "ferenc@example.com": 2,
            "late@example.com": 4,
        }
    )
    request = AssignRequest(team="network", by="least_loaded")
    assignment = choose_agent(request, directory, load)
    assert assignment.agent == "eva@example.com"  # tied with ferenc: the earlier in turn
    assert assignment.note == "least loaded in team network (2 open tickets)"
    # Every assignment adds a ticket, so the loads even out.
    assert assign_many(directory, request, load, 5) == [
        "eva@example.com",
        "ferenc@example.com",
        "eva@example.com",
        "ferenc@example.com",
        "late@example.com",
    ]


def test_least_loaded_ties_rotate(directory: Directory) -> None:
    load = InMemoryAgentLoad(last={"network": "david@example.com"})
    request = AssignRequest(team="network", by="least_loaded")
    assert choose_agent(request, directory, load).agent == "eva@example.com"


def test_least_loaded_with_skill(directory: Directory) -> None:
    load = InMemoryAgentLoad()
    load.open.update({"david@example.com": 1, "eva@example.com": 3, "ferenc@example.com": 0})
    request = AssignRequest(team="network", by="least_loaded", skill="dns")
    assert choose_agent(request, directory, load).agent == "eva@example.com"


def test_named_agent(directory: Directory) -> None:
    load = InMemoryAgentLoad()
    assert choose_agent(AssignRequest(agent="ferenc@example.com"), directory, load).agent == (
        "ferenc@example.com"
    )
    gone = choose_agent(AssignRequest(agent="gone@example.com"), directory, load)
    assert gone.agent is None
    assert gone.note == "agent gone@example.com is not an active agent"


def test_nobody_eligible(directory: Directory) -> None:
    request = AssignRequest(team="network", skill="cobol")
    assignment = choose_agent(request, directory, InMemoryAgentLoad())
    assert assignment.agent is None
    assert assignment.note == "no eligible member in team network"
