"""Pydantic models of the rule files, and validation that reports `file:line:column`.

A model validates one piece of a document (one team, one rule, one action's argument);
its errors are mapped back through the document's positions. Unknown keys get a
"did you mean" from the model's own field names.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from maild.rules.decision import AssignMethod
from maild.rules.errors import RuleIssue
from maild.rules.yamldoc import Document, Path

_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_LANGUAGE = re.compile(r"[a-z]{2,3}")


def suggest(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)', or the list of what is allowed when nothing is close."""
    names = sorted(set(candidates))
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (expected one of: {', '.join(names)})" if names else ""


def suggest_address(address: str, candidates: Iterable[str]) -> str:
    """Like `suggest`, for mail addresses: a shared domain alone does not make them close."""
    by_local: dict[str, str] = {}
    for candidate in sorted(candidates):
        by_local.setdefault(candidate.partition("@")[0], candidate)
    close = difflib.get_close_matches(address.partition("@")[0], by_local, n=1, cutoff=0.6)
    return f" (did you mean '{by_local[close[0]]}'?)" if close else ""


def _one_or_many(value: object) -> object:
    return (
        [value] if isinstance(value, str | int | float) and not isinstance(value, bool) else value
    )


def _address(value: str) -> str:
    value = value.strip().lower()
    if not _ADDRESS.fullmatch(value):
        raise ValueError(f"'{value}' is not a mail address")
    return value


def _language(value: str) -> str:
    value = value.strip().lower()
    if not _LANGUAGE.fullmatch(value):
        raise ValueError(f"'{value}' is not an ISO 639 language code (like en, de, hu)")
    return value


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Texts = Annotated[list[Text], BeforeValidator(_one_or_many)]
Operands = Annotated[list[Text], BeforeValidator(_one_or_many), Field(min_length=1)]
Address = Annotated[str, AfterValidator(_address)]
Addresses = Annotated[list[Address], BeforeValidator(_one_or_many)]
Language = Annotated[str, AfterValidator(_language)]


class _Model(BaseModel):
    # Validators are built on first use, not at import: most commands read no rules file.
    model_config = ConfigDict(
        extra="forbid", frozen=True, coerce_numbers_to_str=True, defer_build=True
    )


# ---------------------------------------------------------------- teams.yaml


class TeamEntry(_Model):
    name: Text
    tier: Literal[1, 2, 3]
    lead: Address | None = None
    members: Addresses = []


class AgentEntry(_Model):
    address: Address
    name: str = ""
    teams: Texts = []
    skills: Texts = []
    languages: Annotated[list[Language], BeforeValidator(_one_or_many)] = []
    active: bool = True


# ---------------------------------------------------------------- routing files


class RuleEntry(_Model):
    name: Text
    when: Any = None
    then: dict[str, Any] = {}
    stop: bool = False
    on: Annotated[list[Literal["new", "reply"]], BeforeValidator(_one_or_many)] = Field(
        default=["new"], min_length=1
    )


# ---------------------------------------------------------------- condition arguments


class TextOps(_Model):
    """Operators on a text field. Several at once must all hold."""

    equals: str | None = None
    in_: Operands | None = Field(None, alias="in")
    contains: Operands | None = None
    starts_with: Operands | None = None
    ends_with: Operands | None = None
    glob: Operands | None = None
    regex: Operands | None = None
    exists: bool | None = None


class HeaderOps(TextOps):
    name: Text


class NumberOps(_Model):
    equals: int | None = Field(None, ge=0)
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def _size(value: object) -> object:
    """Sizes: bytes, or a number with KB, MB, GB (1024-based)."""
    if isinstance(value, str):
        found = _SIZE.fullmatch(value.strip().lower())
        if not found or found.group(2) not in _UNITS:
            raise ValueError(f"'{value}' is not a size (like 500, 200KB, 10MB)")
        return int(float(found.group(1)) * _UNITS[found.group(2)])
    return value


Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]


class SizeOps(_Model):
    equals: Size | None = None
    min: Size | None = None
    max: Size | None = None


class AttachmentArgs(_Model):
    """An attachment matching all of these (on the same attachment)."""

    name: Any = None
    content_type: Any = None
    size: Any = None


# ---------------------------------------------------------------- action arguments


class AssignArgs(_Model):
    agent: Address | None = None
    team: Text | None = None
    by: AssignMethod | None = None
    skill: Text | None = None
    language: Language | None = None


class AutoReplyArgs(_Model):
    template: Text
    language: Language | None = None


class NotifyArgs(_Model):
    agents: Addresses = []
    teams: Texts = []
    addresses: Addresses = []
    template: Text


class TagArgs(_Model):
    add: Texts = []
    remove: Texts = []


# ---------------------------------------------------------------- validation

M = TypeVar("M", bound=BaseModel)


def validate(
    model: type[M], data: object, doc: Document, path: Path, issues: list[RuleIssue]
) -> M | None:
    """The validated model, or None after adding one issue per problem to `issues`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            issues.append(_issue(model, error, doc, path))
        return None


def _issue(model: type[BaseModel], error: Any, doc: Document, path: Path) -> RuleIssue:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        return doc.issue(
            (*path, *loc), f"unknown key '{key}'{suggest(key, keys_of(model, loc[:-1]))}", key=True
        )
    if kind == "missing":
        return doc.issue((*path, *loc[:-1]), f"missing key '{loc[-1]}'")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        allowed = ", ".join(keys_of(model, loc))
        return doc.issue((*path, *loc), f"expected a mapping with keys like: {allowed}")
    message = str(error["ctx"]["error"]) if kind == "value_error" else str(error["msg"])
    name = next((p for p in reversed(loc) if isinstance(p, str)), "")
    return doc.issue((*path, *loc), f"{name}: {message}" if name else message)


def keys_of(model: object, loc: tuple[str | int, ...] = ()) -> list[str]:
    """The keys a model accepts at `loc` inside it (for suggestions)."""
    target: object = model
    for part in loc:
        target = _inner(target, part)
    if isinstance(target, type) and issubclass(target, BaseModel):
        return [info.alias or name for name, info in target.model_fields.items()]
    return []


def _inner(annotation: object, part: str | int) -> object:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
        for name, info in annotation.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and isinstance(part, int) and args:
        return args[0]
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return args[1]
    return None


def _unwrap(annotation: object) -> object:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(options[0]) if len(options) == 1 else annotation
    return annotation
