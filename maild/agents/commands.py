"""Commands at the top of an agent's reply (`#status pending`, `#assign me` ...). Pure.

Command lines come first, one per line (blank lines between them are fine); the first
other line ends them. Every problem is collected, so the agent hears of all at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from maild.rules.decision import PRIORITIES, TICKET_TYPES
from maild.rules.teams import Directory
from maild.types import TicketStatus

_COMMAND = re.compile(r"#(?P<name>[A-Za-z_-]+)(?:[ \t]+(?P<arg>.*))?$")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
STATUSES = tuple(s.value for s in TicketStatus if s is not TicketStatus.NEW)
TIERS = ("1", "2", "3")

HELP = (
    ("#assign me|ADDRESS|TEAM", "give the ticket to yourself, another agent or a team"),
    ("#status " + "|".join(STATUSES), "set the status"),
    ("#priority " + "|".join(PRIORITIES), "set the priority"),
    ("#tier 1|2|3", "set the support tier"),
    ("#queue NAME", "move to a queue"),
    ("#type " + "|".join(TICKET_TYPES), "set the ticket type"),
    ("#tag +ADD -REMOVE", "add and remove tags"),
    ("#note", "the whole mail is an internal note, never sent to the customer"),
    ("#nosend", "record the reply on the ticket without sending it"),
)


class _ReaderFn(Protocol):
    def __call__(
        self, arg: str, agent: str, directory: Directory
    ) -> tuple[tuple[str, ...], str | None]: ...


@dataclass(frozen=True, slots=True)
class Command:
    """One valid command: `name` and its normalised value.

    assign: ("agent", address) or ("team", name); tag: ("+a", "-b"); note/nosend: ().
    """

    name: str
    value: tuple[str, ...]
    line: str


@dataclass(frozen=True, slots=True)
class Parsed:
    commands: tuple[Command, ...]
    errors: tuple[str, ...]
    # The text after the command lines.
    body: str

    @property
    def note(self) -> bool:
        return any(c.name == "note" for c in self.commands)

    @property
    def nosend(self) -> bool:
        return any(c.name == "nosend" for c in self.commands)


def parse_commands(text: str, agent: str, directory: Directory) -> Parsed:
    """The commands at the top of `text` (sent by `agent`), the errors, and the rest."""
    lines = text.split("\n")
    commands: list[Command] = []
    errors: list[str] = []
    end = 0
    for index, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            end = index + 1
            continue
        found = _COMMAND.fullmatch(line)
        if found is None:
            break
        end = index + 1
        name = found["name"].lower()
        arg = (found["arg"] or "").strip()
        reader = _READERS.get(name)
        if reader is None:
            errors.append(f"{line}: unknown command #{name}")
            continue
        value, problem = reader(arg, agent.lower(), directory)
        if problem is not None:
            errors.append(f"{line}: {problem}")
        else:
            commands.append(Command(name, value, line))
    body = "\n".join(lines[end:]).strip("\n")
    return Parsed(tuple(commands), tuple(errors), body + "\n" if body else "")


def _assign(arg: str, agent: str, directory: Directory) -> tuple[tuple[str, ...], str | None]:
    if not arg:
        return (), "say whom: me, an agent's address or a team"
    if arg.lower() == "me":
        return ("agent", agent), None
    if arg.lower() in directory.agents:
        if not directory.agents[arg.lower()].active:
            return (), f"agent {arg} is not active"
        return ("agent", arg.lower()), None
    if arg in directory.teams:
        return ("team", arg), None
    return (), f"no agent or team called {arg!r}"


def _choice(options: tuple[str, ...], what: str) -> _ReaderFn:
    def read(arg: str, agent: str, directory: Directory) -> tuple[tuple[str, ...], str | None]:
        value = arg.lower()
        if value not in options:
            return (), f"{what} must be one of {', '.join(options)}"
        return (value,), None

    return read


def _queue(arg: str, agent: str, directory: Directory) -> tuple[tuple[str, ...], str | None]:
    if not _NAME.fullmatch(arg):
        return (), "a queue name (letters, digits, '.', '_', '-') is needed"
    return (arg,), None


def _tag(arg: str, agent: str, directory: Directory) -> tuple[tuple[str, ...], str | None]:
    changes: list[str] = []
    for word in arg.split():
        sign, name = (word[0], word[1:]) if word[0] in "+-" else ("+", word)
        if not _NAME.fullmatch(name):
            return (), f"{word!r} is not a tag"
        changes.append(sign + name)
    if not changes:
        return (), "say which tags: +add -remove"
    return tuple(changes), None


def _flag(arg: str, agent: str, directory: Directory) -> tuple[tuple[str, ...], str | None]:
    return ((), "takes no argument") if arg else ((), None)


_READERS: dict[str, _ReaderFn] = {
    "assign": _assign,
    "status": _choice(STATUSES, "status"),
    "priority": _choice(PRIORITIES, "priority"),
    "tier": _choice(TIERS, "tier"),
    "queue": _queue,
    "type": _choice(TICKET_TYPES, "type"),
    "tag": _tag,
    "note": _flag,
    "nosend": _flag,
}
