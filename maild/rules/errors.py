"""Problems found in operator rule files, each with the file, line and column it is about."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from maild.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RuleIssue:
    """One problem at `file:line:column` (1-based; line 0 means the file as a whole)."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class RuleError(ConfigError):
    """The rule files are wrong. Carries every problem found, not just the first."""

    def __init__(self, issues: Iterable[RuleIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
