"""YAML text to plain data, remembering where every key and value was written.

PyYAML composes the node tree (which carries marks); we build the plain values ourselves
so that:

* every value and every mapping key has a 1-based line and column, looked up by its
  path (`("rules", 3, "then", "team")`), so any later check can name `file:line:column`;
* plain scalars follow YAML 1.2 (only `true`/`false` are booleans; `on`, `yes`, `no`
  stay text: `on: [reply]` is a key, not `True`, and the language `no` stays Norwegian);
* mapping keys are always the text written, and a key given twice is an error instead
  of silently keeping the last value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from maild.rules.errors import RuleIssue

Path = tuple[str | int, ...]

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"

# YAML 1.2 core schema, for plain (unquoted) scalars.
_NULL = re.compile(r"~|null|Null|NULL|")
_TRUE = re.compile(r"true|True|TRUE")
_FALSE = re.compile(r"false|False|FALSE")
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


@dataclass(frozen=True)
class Document:
    """One YAML file as plain data, with the position of every value and key in it."""

    file: str
    data: object
    values: Mapping[Path, Mark]
    keys: Mapping[Path, Mark]

    def mark(self, path: Path, *, key: bool = False) -> Mark:
        """Where `path` was written: its key if `key` and there is one, else its value;
        the nearest written ancestor for a path that is not in the file (a missing key)."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            found = self.values.get(path[:end])
            if found is not None:
                return found
        return Mark(1, 1)

    def issue(self, path: Path, message: str, *, key: bool = False) -> RuleIssue:
        mark = self.mark(path, key=key)
        return RuleIssue(self.file, mark.line, mark.column, message)


def load_yaml(text: str, file: str) -> tuple[Document | None, list[RuleIssue]]:
    """Parse one YAML document. Returns the document (None if unreadable) and problems."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        return None, [RuleIssue(file, *where, f"invalid YAML: {message}")]
    except yaml.YAMLError as exc:
        return None, [RuleIssue(file, 1, 1, f"invalid YAML: {exc}")]
    builder = _Builder(file)
    data = builder.build(root, ()) if root is not None else None
    return Document(file, data, builder.values, builder.keys), builder.issues


def _mark(node: Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[Path, Mark] = {}
        self.keys: dict[Path, Mark] = {}
        self.issues: list[RuleIssue] = []
        self._open: set[int] = set()  # nodes being built: an alias to one of them is a cycle

    def _problem(self, node: Node, message: str) -> None:
        mark = _mark(node)
        self.issues.append(RuleIssue(self.file, mark.line, mark.column, message))

    def build(self, node: Node, path: Path) -> object:
        self.values.setdefault(path, _mark(node))
        if isinstance(node, ScalarNode):
            return _scalar(node)
        if id(node) in self._open:
            self._problem(node, "an alias refers to the collection it is in")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
        finally:
            self._open.discard(id(node))
        self._problem(node, "unsupported YAML node")
        return None

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, object]:
        result: dict[str, object] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self._problem(key_node, "a key must be plain text")
                continue
            key = str(key_node.value)
            if key in result:
                self._problem(key_node, f"key '{key}' is given twice in this mapping")
                continue
            self.keys[(*path, key)] = _mark(key_node)
            result[key] = self.build(value_node, (*path, key))
        # `<<:` fills in what the mapping does not say itself; earlier sources win.
        for source in merges:
            for key_node, value_node in self._merge_pairs(source):
                key = str(key_node.value)
                if isinstance(key_node, ScalarNode) and key not in result:
                    self.keys[(*path, key)] = _mark(key_node)
                    result[key] = self.build(value_node, (*path, key))
        return result

    def _merge_pairs(self, node: Node) -> list[tuple[Node, Node]]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        pairs: list[tuple[Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self._problem(source, "`<<` merges only mappings")
                continue
            pairs.extend(source.value)
        return pairs


def _scalar(node: ScalarNode) -> object:
    text = str(node.value)
    if node.style:  # quoted or block scalars are always text
        return text
    if _NULL.fullmatch(text):
        return None
    if _TRUE.fullmatch(text):
        return True
    if _FALSE.fullmatch(text):
        return False
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text
