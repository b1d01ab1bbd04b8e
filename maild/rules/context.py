"""What a condition or action compiler may use while a rule file is compiled."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel

from maild.rules.errors import RuleIssue
from maild.rules.nodes import Atom
from maild.rules.schema import suggest, suggest_address, validate
from maild.rules.teams import Directory, Names
from maild.rules.yamldoc import Document, Path

M = TypeVar("M", bound=BaseModel)
A = TypeVar("A", bound=Atom)


@dataclass(frozen=True)
class KnownNames:
    """Names other parts of maild define, for checking references at load.

    None means "not known yet, accept any name": templates and SLA policies come with
    later features, which pass their registries' names here.
    """

    templates: frozenset[str] | None = None
    sla_policies: frozenset[str] | None = None
    calendars: frozenset[str] | None = None


class AtomTable:
    """Every distinct atom of a rule set, numbered; equal atoms are stored once."""

    def __init__(self) -> None:
        self._by_key: dict[Hashable, Atom] = {}
        self.atoms: list[Atom] = []

    def add(self, atom: A) -> A:
        known = self._by_key.get(atom.key())
        if known is not None:
            assert isinstance(known, type(atom))
            return known
        atom.id = len(self.atoms)
        self.atoms.append(atom)
        self._by_key[atom.key()] = atom
        return atom


class Context:
    """Positions, references and the atom table for one document being compiled.

    Team and agent references are checked against `names`; `directory` (for checks that
    need members, skills and who is active) is None when teams.yaml itself is broken.
    """

    def __init__(
        self,
        doc: Document,
        directory: Directory | None,
        names: Names,
        known: KnownNames,
        atoms: AtomTable,
        issues: list[RuleIssue],
    ) -> None:
        self.doc = doc
        self.directory = directory
        self.names = names
        self.known = known
        self.atoms = atoms
        self.issues = issues

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self.issues.append(self.doc.issue(path, message, key=key))

    def validate(self, model: type[M], data: object, path: Path) -> M | None:
        return validate(model, data, self.doc, path, self.issues)

    def atom(self, atom: A) -> A:
        return self.atoms.add(atom)

    def check_team(self, name: str, path: Path) -> bool:
        if name in self.names.teams:
            return True
        self.error(path, f"unknown team '{name}'{suggest(name, self.names.teams)}")
        return False

    def check_agent(self, address: str, path: Path, *, assignable: bool = False) -> bool:
        if address not in self.names.agents:
            self.error(
                path, f"unknown agent '{address}'{suggest_address(address, self.names.agents)}"
            )
            return False
        agent = self.directory.agents.get(address) if self.directory is not None else None
        if assignable and agent is not None and not agent.active:
            self.error(path, f"agent '{address}' is not active")
            return False
        return True

    def check_template(self, name: str, path: Path) -> bool:
        return self._check_known("template", name, self.known.templates, path)

    def check_sla(self, name: str, path: Path) -> bool:
        return self._check_known("SLA policy", name, self.known.sla_policies, path)

    def check_calendar(self, name: str, path: Path) -> bool:
        return self._check_known("calendar", name, self.known.calendars, path)

    def _check_known(self, kind: str, name: str, known: frozenset[str] | None, path: Path) -> bool:
        if known is None or name in known:
            return True
        self.error(path, f"unknown {kind} '{name}'{suggest(name, known)}")
        return False
