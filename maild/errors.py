"""Exceptions whose type carries the outcome. Only the orchestrator and the edges translate them."""

from __future__ import annotations


class MaildError(Exception):
    """Base for errors maild raises on purpose."""


class _StepOutcome(MaildError):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason

    def __reduce__(self) -> tuple[type[_StepOutcome], tuple[str, str]]:
        # Parse-ahead workers send these back across processes.
        return (type(self), (self.step, self.reason))


class Quarantine(_StepOutcome):
    """The mail cannot be processed: keep it in quarantine with the step and the reason."""


class Ignore(_StepOutcome):
    """The mail is kept but makes no ticket (an auto-reply to nothing, a duplicate)."""


class TemporaryFailure(MaildError):
    """A dependency (the database) is unavailable; the caller should retry later."""


class ConfigError(MaildError):
    """An operator file is wrong. The message names the file, the key and what was expected."""
