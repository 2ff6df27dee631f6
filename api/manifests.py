"""Reading manifests the way kubectl does, with hard limits, every document located by file and index.

kubectl reads YAML with go-yaml v2, converts it to JSON and sends that; the API server sees the
JSON. The loader here resolves plain scalars by the same rules (goyaml.py) and returns what the
server would decode, so `forgeline validate` judges the object the server would judge: `3e-4` is a
number, `on` and `y` are booleans, `1:30` and `2024-01-01` are strings, and `2.0` in an integer
field is the integer 2 (JSON has one number type). Values JSON cannot carry (`.nan`, `.inf`) are
kept so that validation can point at them; kubectl refuses such a file.

Limits are hard and checked while the file is parsed, before any value is built: nesting depth,
values per document after alias expansion (a "billion laughs" document is refused in
milliseconds, never expanded), bytes per document and per file. Duplicate keys, which YAML
forbids and go-yaml silently resolves (the last wins), are an error here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.scanner import Scanner

from forgeline.api.explain import field_path
from forgeline.api.goyaml import GoYamlConstructor, GoYamlResolver, go_yaml_scalar

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DOCUMENT_BYTES = 3 * 1024 * 1024  # the API server refuses larger request bodies
MAX_DEPTH = 64  # a job manifest nests about 8 deep (spec.resources.affinity goes furthest)
MAX_VALUES = 100_000  # per document, counting every value an alias repeats

PathPart = str | int
_STR = "tag:yaml.org,2002:str"


class _Limit(yaml.YAMLError):
    def __init__(self, path: tuple[PathPart, ...], message: str, mark: Any) -> None:
        super().__init__(message)
        self.path, self.message, self.mark = path, message, mark


_TOO_DEEP = f"is nested more than {MAX_DEPTH} levels deep; check the indentation and brackets"


def _outer(path: list[PathPart]) -> tuple[PathPart, ...]:
    """Where over-deep nesting starts: up to the first list of lists, at most 8 fields deep."""
    for i in range(len(path) - 1):
        if isinstance(path[i], int) and isinstance(path[i + 1], int):
            return tuple(path[: min(i, 8)])
    return tuple(path[:8])


class _Scanner(Scanner):
    """Brackets nested past the limit stop the scanner itself (its look-ahead grows with depth)."""

    get_mark: Callable[[], Any]  # from the Reader it is mixed with

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= 2 * MAX_DEPTH:
            raise _Limit((), _TOO_DEEP, self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


class _Composer(Composer):
    """go-yaml's composition plus the limits, the field path of each node, and the source text of
    each plain scalar that did not resolve to a string (for "quote it" hints)."""

    peek_event: Callable[[], Any]  # from the Parser it is mixed with

    def compose_document(self) -> Any:
        self.path: list[PathPart] = []
        self.values = 0
        self.weights: dict[str, int] = {}
        self.implicit: dict[tuple[PathPart, ...], str] = {}
        return super().compose_document()

    def compose_node(self, parent: Node | None, index: Any) -> Any:
        event = self.peek_event()
        is_key = parent is not None and index is None
        if not is_key and parent is not None:
            self.path.append(index.value if isinstance(index, ScalarNode) else index if isinstance(index, int) else "?")
        try:
            return self._compose_counted(parent, index, event, is_key)
        finally:
            if not is_key and parent is not None:
                self.path.pop()

    def _compose_counted(self, parent: Node | None, index: Any, event: Any, is_key: bool) -> Any:
        if isinstance(event, yaml.AliasEvent):
            name = str(event.anchor)
            if name in self.anchors and name not in self.weights:
                raise _Limit(tuple(self.path), f"the alias *{name} refers to itself; YAML data cannot contain itself",
                             event.start_mark)  # fmt: skip
            self._count(self.weights.get(name, 1), event)
            return super().compose_node(parent, index)
        if len(self.path) > MAX_DEPTH:
            raise _Limit(_outer(self.path), _TOO_DEEP, event.start_mark)
        before = self.values
        self._count(1, event)
        anchor = getattr(event, "anchor", None)
        if anchor:
            self.weights.pop(anchor, None)  # a redefined anchor: its old weight no longer applies
        node = super().compose_node(parent, index)
        if anchor:
            self.weights[anchor] = self.values - before
        if isinstance(node, MappingNode):
            self._refuse_duplicate_keys(node)
        elif not is_key and isinstance(node, ScalarNode) and node.style is None and node.tag != _STR:
            self.implicit[tuple(self.path)] = node.value
        return node

    def _count(self, weight: int, event: Any) -> None:
        self.values += weight
        if self.values > MAX_VALUES:
            raise _Limit(tuple(self.path), f"the document holds more than {MAX_VALUES} values once its aliases are "
                         "expanded; write the values out, or fewer of them", event.start_mark)  # fmt: skip

    def _refuse_duplicate_keys(self, node: MappingNode) -> None:
        seen: dict[str, Any] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if key.value in seen:
                first = seen[key.value].start_mark.line + 1
                raise _Limit((*self.path, key.value), f"appears twice in one mapping (first at line {first}); "
                             "keep one", key.start_mark)  # fmt: skip
            seen[key.value] = key


class _Loader(Reader, _Scanner, Parser, _Composer, GoYamlConstructor, GoYamlResolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        _Scanner.__init__(self)
        Parser.__init__(self)
        _Composer.__init__(self)
        GoYamlConstructor.__init__(self)
        GoYamlResolver.__init__(self)


@dataclass(frozen=True)
class Document:
    source: str  # "<file>" or "<file>#<n>" when the file holds several documents
    index: int
    body: Any
    # The source text of plain scalars YAML read as something other than a string, by field path.
    implicit: dict[tuple[PathPart, ...], str] = field(default_factory=dict, compare=False, repr=False)


class ManifestSyntaxError(Exception):
    """A file that yields no objects to check: unreadable, not UTF-8, invalid YAML, over a limit."""

    def __init__(self, source: str, message: str, path: str = "") -> None:
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")
        self.source, self.message, self.path = source, message, path


def _decode(path: Path, data: bytes) -> str:
    utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))  # a byte order mark: go-yaml reads UTF-16 too
    try:
        return data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as exc:
        if utf16:
            raise ManifestSyntaxError(str(path), "starts as UTF-16 but is not; save the file as UTF-8") from None
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise ManifestSyntaxError(
            str(path),
            f"byte 0x{data[exc.start]:02x} at line {line}, column {column} is not UTF-8; save the file as UTF-8",
        ) from None


def _read(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ManifestSyntaxError(str(path), f"cannot read the file ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ManifestSyntaxError(str(path), f"is larger than {MAX_FILE_BYTES // 2**20} MiB; split it")
    return _decode(path, data)


def _yaml_problem(path: Path, text: str, exc: yaml.YAMLError) -> ManifestSyntaxError:
    if isinstance(exc, yaml.reader.ReaderError):
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - text.rfind("\n", 0, exc.position)
        return ManifestSyntaxError(
            str(path), f"invalid YAML: character {char} at line {line}, column {column} is not allowed; remove it"
        )
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return ManifestSyntaxError(str(path), f"invalid YAML{where}: {problem}; fix the syntax")


class _Found(list[tuple[Any, dict[tuple[PathPart, ...], str]]]):
    """Documents read so far, each a body and the source text of its implicitly typed scalars."""


def _compose_all(text: str, found: _Found) -> None:
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            if node.end_mark.index - node.start_mark.index > MAX_DOCUMENT_BYTES:
                raise _Limit((), f"a document is larger than {MAX_DOCUMENT_BYTES // 2**20} MiB, more than the "
                             "API server accepts", node.start_mark)  # fmt: skip
            implicit = loader.implicit
            body = loader.construct_document(node)
            if body is not None:
                found.append((body, implicit))
    finally:
        loader.dispose()


def _limit_with_path(text: str, limit: _Limit) -> _Limit:
    """The scanner stops deep brackets before the composer knows where they are: compose the text
    up to that point again (the composer's lower limit trips first there) to name the field."""
    if limit.path or limit.mark is None:
        return limit
    try:
        _compose_all(text[: limit.mark.index], _Found())
    except _Limit as located:
        return located
    except yaml.YAMLError:
        pass
    return limit


def load_documents(path: Path) -> list[Document]:
    """All non-empty documents of a YAML file; ManifestSyntaxError says what is wrong, and where."""
    text = _read(path)
    found = _Found()
    try:
        _compose_all(text, found)
    except _Limit as exc:
        limit = _limit_with_path(text, exc)
        number = len(found) + 1
        source = f"{path}#{number}" if number > 1 else str(path)
        line = f" (line {limit.mark.line + 1})" if limit.mark else ""
        raise ManifestSyntaxError(source, limit.message + line, field_path(limit.path)) from None
    except yaml.YAMLError as exc:
        raise _yaml_problem(path, text, exc) from None
    if not found:
        raise ManifestSyntaxError(str(path), "no Kubernetes objects in this file; add at least one")
    many = len(found) > 1
    return [
        Document(f"{path}#{i + 1}" if many else str(path), i, body, implicit)
        for i, (body, implicit) in enumerate(found)
    ]


__all__ = ["MAX_DEPTH", "MAX_DOCUMENT_BYTES", "MAX_FILE_BYTES", "MAX_VALUES", "Document", "ManifestSyntaxError",
           "go_yaml_scalar", "iter_documents", "load_documents"]  # fmt: skip


def iter_documents(paths: list[Path]) -> Iterator[Document | ManifestSyntaxError]:
    for path in paths:
        try:
            yield from load_documents(path)
        except ManifestSyntaxError as exc:
            yield exc
