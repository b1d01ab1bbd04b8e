"""Load a rules directory as one validated set, and keep the last good set while running."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from maild.logs import event
from maild.rules.compiler import CompiledRule, compile_routing
from maild.rules.context import AtomTable, Context, KnownNames
from maild.rules.engine import RuleSet
from maild.rules.errors import RuleError, RuleIssue
from maild.rules.teams import TEAMS_FILE, Directory, Names, build_directory
from maild.rules.yamldoc import load_yaml

log = logging.getLogger("maild.rules")
SLA_FILE = "sla.yaml"


def rule_files(directory: Path) -> list[Path]:
    """The routing files of a directory: `*.yaml` but teams.yaml and sla.yaml (the SLA
    policies, maild/sla/policy.py), in name order.

    Names starting with '.' are editors' lock and swap files, never rules.
    """
    return sorted(
        p
        for p in directory.glob("*.yaml")
        if p.name not in (TEAMS_FILE, SLA_FILE) and not p.name.startswith(".") and p.is_file()
    )


def load_rules(directory: str | Path, *, known: KnownNames | None = None) -> RuleSet:
    """Read `teams.yaml` and every other `*.yaml` of `directory`, validate them as a
    whole, and compile them. Raises RuleError with every problem found."""
    root = Path(directory)
    known = known or KnownNames()
    if known.sla_policies is None or known.calendars is None:
        policies, calendars = _sla_names(root)
        known = replace(
            known,
            sla_policies=known.sla_policies if known.sla_policies is not None else policies,
            calendars=known.calendars if known.calendars is not None else calendars,
        )
    if not root.is_dir():
        raise RuleError([RuleIssue(str(root), 0, 0, "not a directory")])
    issues: list[RuleIssue] = []
    directory_ok: Directory | None = Directory()
    names = Names()
    teams_path = root / TEAMS_FILE
    if teams_path.is_file():
        team_issues: list[RuleIssue] = []
        doc, found = load_yaml(_read(teams_path, team_issues), str(teams_path))
        team_issues += found
        directory_ok = None
        if doc is not None:
            directory_ok, names = build_directory(doc, team_issues)
        if team_issues:
            directory_ok = None  # member, skill and activity checks need a sound teams.yaml
        issues += sorted(team_issues, key=lambda i: (i.line, i.column))

    for stray in sorted(root.glob("*.yml")):
        if not stray.name.startswith("."):
            issues.append(RuleIssue(str(stray), 1, 1, "not read: rule files end in .yaml"))

    atoms = AtomTable()
    first_seen: dict[str, str] = {}
    rules: list[CompiledRule] = []
    files = [str(teams_path)] if teams_path.is_file() else []
    for path in rule_files(root):
        files.append(str(path))
        file_issues: list[RuleIssue] = []
        doc, found = load_yaml(_read(path, file_issues), str(path))
        file_issues += found
        if doc is not None:
            ctx = Context(doc, directory_ok, names, known, atoms, file_issues)
            rules += compile_routing(ctx, first_seen)
        issues += sorted(file_issues, key=lambda i: (i.line, i.column))
    if issues:
        raise RuleError(issues)
    assert directory_ok is not None
    return RuleSet(rules, directory_ok, files)


def _sla_names(root: Path) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """The policy and calendar names of sla.yaml, for checking `sla:` actions and
    `business_hours:` conditions; None (any name) where the file does not say
    (maild/sla/policy.py reports its problems)."""
    path = root / SLA_FILE
    if not path.is_file():
        return None, frozenset()  # no file, no calendars: nothing to be open in
    try:
        doc, _ = load_yaml(path.read_text("utf-8"), str(path))
    except (OSError, UnicodeDecodeError):
        return None, None
    data = doc.data if doc is not None else None

    def names(section: str) -> frozenset[str] | None:
        found = data.get(section) if isinstance(data, dict) else None
        return frozenset(found) if isinstance(found, dict) else None

    return names("policies"), names("calendars")


def _read(path: Path, issues: list[RuleIssue]) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        issues.append(RuleIssue(str(path), 1, 1, f"cannot read: {exc.strerror}"))
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        issues.append(RuleIssue(str(path), line, column, f"not UTF-8 text: {exc.reason}"))
        return ""


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    issues: tuple[RuleIssue, ...] = ()


class RuleHolder:
    """The rule set in force. `reload()` validates the whole directory anew and swaps the
    new set in at once; if anything is wrong the last good set stays, the problems are
    logged, and `failed_reloads` (a counter for the metrics) goes up.

    Reading `current` takes no lock: it is one attribute read, and a RuleSet never
    changes, so a mail is routed by exactly one set. Reloads are serialised.
    """

    def __init__(self, directory: str | Path, rules: RuleSet, known: KnownNames | None = None):
        self.directory = Path(directory)
        self.known = known or KnownNames()
        self._current = rules
        self._lock = threading.Lock()
        self.failed_reloads = 0
        self.last_issues: tuple[RuleIssue, ...] = ()

    @classmethod
    def load(cls, directory: str | Path, known: KnownNames | None = None) -> RuleHolder:
        """Load the first set. Raises RuleError: without good rules there is nothing to keep."""
        return cls(directory, load_rules(directory, known=known), known)

    @property
    def current(self) -> RuleSet:
        return self._current

    def reload(self) -> ReloadResult:
        with self._lock:
            try:
                rules = load_rules(self.directory, known=self.known)
            except RuleError as exc:
                self.failed_reloads += 1
                self.last_issues = exc.issues
                event(
                    log,
                    "rules reload failed; the last good rules stay in force",
                    logging.ERROR,
                    directory=str(self.directory),
                    errors=[str(issue) for issue in exc.issues],
                )
                return ReloadResult(False, exc.issues)
            self._current = rules
            self.last_issues = ()
            event(
                log,
                "rules reloaded",
                directory=str(self.directory),
                rules=len(rules.rules),
                files=len(rules.files),
            )
            return ReloadResult(True)
