"""Conditions and actions, registered by name.

A name registered twice fails at import; an unknown name fails at load, with a
suggestion. A compiler gets the YAML value, its path (for positions) and the context;
it reports problems through the context and returns None if there were any.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from maild.rules.context import Context
from maild.rules.decision import Draft
from maild.rules.nodes import Node
from maild.rules.schema import suggest
from maild.rules.yamldoc import Path

T = TypeVar("T")


class Action(Protocol):
    """One compiled action of a rule's `then`."""

    def apply(self, draft: Draft) -> None: ...

    def describe(self) -> str: ...


ConditionCompiler = Callable[[object, Path, Context], Node | None]
ActionCompiler = Callable[[object, Path, Context], Action | None]


class DuplicateName(Exception):
    """Raised at import when two extensions claim the same name."""


class Registry(Generic[T]):
    def __init__(self, kind: str, reserved: Iterable[str] = ()) -> None:
        self.kind = kind
        self._reserved = frozenset(reserved)
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        if name in self._items or name in self._reserved:
            raise DuplicateName(f"{self.kind} '{name}' is registered twice")
        self._items[name] = item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@CONDITIONS.register("subject")`."""

        def decorate(item: T) -> T:
            self.add(name, item)
            return item

        return decorate

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> frozenset[str]:
        return frozenset(self._items) | self._reserved

    def unknown(self, name: str) -> str:
        return f"unknown {self.kind} '{name}'{suggest(name, self.names())}"


COMBINATORS = ("all", "any", "not")
CONDITIONS: Registry[ConditionCompiler] = Registry("condition", reserved=COMBINATORS)
ACTIONS: Registry[ActionCompiler] = Registry("action")
