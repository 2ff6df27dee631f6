"""Reading manifests: YAML 1.2 numbers, every document located by file and index.

PyYAML follows YAML 1.1, where `3e-4` is a string; kubectl reads it as a number. Users write
learning rates that way, so the loader here resolves floats the way the API server's does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class Document:
    source: str  # "<file>" or "<file>#<n>" when the file holds several documents
    index: int
    body: Any


class ManifestSyntaxError(Exception):
    """Invalid YAML, with where and what."""


def load_documents(path: Path) -> list[Document]:
    """All non-empty documents of a YAML file; ManifestSyntaxError names the line and column."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestSyntaxError(f"{path}: cannot read the file ({exc.strerror})") from None
    try:
        bodies = [b for b in yaml.load_all(text, Loader=_Loader) if b is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestSyntaxError(f"{path}: invalid YAML{where}: {problem}; fix the syntax") from None
    if not bodies:
        raise ManifestSyntaxError(f"{path}: no Kubernetes objects in this file; add at least one")
    many = len(bodies) > 1
    return [Document(f"{path}#{i + 1}" if many else str(path), i, b) for i, b in enumerate(bodies)]


def iter_documents(paths: list[Path]) -> Iterator[Document | ManifestSyntaxError]:
    for path in paths:
        try:
            yield from load_documents(path)
        except ManifestSyntaxError as exc:
            yield exc
