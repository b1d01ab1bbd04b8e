"""Routing rules: operator-written YAML that decides where every ticket goes.

    rules = load_rules("rules/")                 # or RuleHolder.load(...) in the daemon
    decision = rules.route(mail, envelope, mail_class=..., is_reply=False)
    who = choose_agent(decision.assign, rules.directory, load)   # if decision.assign

Modules: yamldoc (YAML with positions), schema (pydantic models), registry (conditions
and actions by name), conditions / actions (the built-ins), compiler, engine (RuleSet:
route and explain), assign (choosing an agent), loader (load_rules, RuleHolder), cli
(`maild rules check` / `test`). The file format is documented in rules/routing.yaml.
"""

from maild.rules.assign import AgentLoad, Assignment, InMemoryAgentLoad, choose_agent
from maild.rules.context import KnownNames
from maild.rules.decision import (
    AssignRequest,
    AutoReply,
    Disposition,
    FiredRule,
    MatchedCondition,
    Notify,
    RouteDecision,
)
from maild.rules.engine import Explanation, RuleSet, RuleTrace
from maild.rules.errors import RuleError, RuleIssue
from maild.rules.facts import MailFacts
from maild.rules.loader import ReloadResult, RuleHolder, load_rules
from maild.rules.teams import Agent, Directory, Team

__all__ = [
    "Agent",
    "AgentLoad",
    "AssignRequest",
    "Assignment",
    "AutoReply",
    "Directory",
    "Disposition",
    "Explanation",
    "FiredRule",
    "InMemoryAgentLoad",
    "KnownNames",
    "MailFacts",
    "MatchedCondition",
    "Notify",
    "ReloadResult",
    "RouteDecision",
    "RuleError",
    "RuleHolder",
    "RuleIssue",
    "RuleSet",
    "RuleTrace",
    "Team",
    "choose_agent",
    "load_rules",
]
