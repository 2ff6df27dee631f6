"""Hypothesis strategies for hostile manifests, shared by the pure fuzz tests (tests/unit/test_fuzz.py)
and the one against the real API server (tests/cluster/test_fuzz_server.py).

`mutated()` takes a valid example document and applies one to three structural mutations: a leaf of
another type, extreme numbers, homoglyphs and invisible characters, deleted or unknown keys, deep
nesting, lists where mappings go, Kubernetes-managed label keys. Some mutations are mild on purpose,
so that part of what is generated still parses and reaches decide and render.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from forgeline.api.manifests import load_documents
from forgeline.operator.render import RenderSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VALID = [
    doc.body for name in ("pipeline.yaml", "dpo.yaml", "byo/pipeline.yaml") for doc in load_documents(EXAMPLES / name)
]
SETTINGS = RenderSettings(store="s3://store")
FUZZ = settings(
    max_examples=1000,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Kubernetes' own patterns (apimachinery validation.IsQualifiedName and IsValidLabelValue).
_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
QUALIFIED_NAME = re.compile(rf"^({_DNS_SUBDOMAIN}/)?{_NAME}$")
LABEL_VALUE = re.compile(rf"^{_NAME}?$")

# Strings a hostile or careless author writes: homoglyphs, invisible and direction characters,
# path and namespace tricks, YAML 1.1 words, Kubernetes-managed label keys.
TRICKY = [
    "b\u0430se",  # Cyrillic a
    "base\u200b",  # zero-width space
    "\u200dbase",  # zero-width joiner
    "base\u202egpj",  # right-to-left override
    "\uff42ase",  # fullwidth b
    "base-\U0001f680",
    "../../other-ns/model",
    "s3://store/other-ns/pretrainjob/base",
    "other-ns/secret",
    "NO",
    "0755",
    "1:30",
    "",
    " ",
    "a" * 300,
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "forgeline.io/job",
    "kubernetes.io/",
    "x" * 64,
]
EXTREME_NUMBERS = [0, -1, -(2**63), 2**63, 2**31, 10**30, 1e308, -1e-308, math.nan, math.inf, -math.inf, 0.5]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(TRICKY),
    st.sampled_from(EXTREME_NUMBERS),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
PLAIN_KEYS = st.from_regex(r"\A([a-z]{1,8}\.io/)?[a-z]([-a-z0-9_.]{0,20}[a-z0-9])?\Z")
keys = st.one_of(st.text(max_size=12), st.sampled_from(TRICKY))

Path_ = tuple[Any, ...]


def _paths(node: Any, at: Path_ = ()) -> list[Path_]:
    """Every position in a document (the root excluded), parents before children."""
    out: list[Path_] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append((*at, key))
        out += _paths(child, (*at, key))
    return out


def _get(node: Any, path: Path_) -> Any:
    for key in path:
        node = node[key]
    return node


def _nest(value: Any, depth: int, lists: bool) -> Any:
    for _ in range(depth):
        value = [value] if lists else {"x": value}
    return value


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """A valid example with one to three structural mutations."""
    body = copy.deepcopy(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        if not isinstance(body, dict):
            break
        paths = _paths(body)
        path = draw(st.sampled_from(paths))
        parent, key, old = _get(body, path[:-1]), path[-1], _get(body, path)
        how = draw(
            st.sampled_from(["retype", "number", "string", "delete", "add", "nest", "list-for-map", "label"])
            | st.sampled_from(["tweak", "plain-label"])  # often still valid: decide and render see these
        )
        if how == "tweak":
            if isinstance(old, int) and not isinstance(old, bool):
                parent[key] = draw(st.integers(0, 4096))
            elif isinstance(old, float):
                parent[key] = draw(st.floats(0, 1))
        elif how == "plain-label":
            metadata = body.setdefault("metadata", {})
            field = draw(st.sampled_from(["labels", "annotations"]))
            if isinstance(metadata, dict) and isinstance(metadata.setdefault(field, {}), dict):
                metadata[field][draw(PLAIN_KEYS)] = draw(PLAIN_KEYS | st.text(max_size=20))
        elif how == "retype":
            new = draw(values)
            parent[key] = new if type(new) is not type(old) else [new]
        elif how == "number":
            parent[key] = draw(st.sampled_from(EXTREME_NUMBERS) | st.integers() | st.floats())
        elif how == "string":
            parent[key] = draw(st.sampled_from(TRICKY) | st.text(max_size=40))
        elif how == "delete" and isinstance(parent, dict):
            del parent[key]
        elif how == "add":
            target = old if isinstance(old, dict) else parent
            if isinstance(target, dict):
                target[draw(keys)] = draw(values)
        elif how == "nest":
            parent[key] = _nest(old, draw(st.integers(1, 80)), draw(st.booleans()))
        elif how == "list-for-map":
            parent[key] = list(old.values()) if isinstance(old, dict) else {"item": old}
        else:
            metadata = body.setdefault("metadata", {})
            if isinstance(metadata, dict):
                field = draw(st.sampled_from(["labels", "annotations"]))
                if not isinstance(metadata.get(field), dict):
                    metadata[field] = {}
                metadata[field][draw(keys)] = draw(st.sampled_from(TRICKY) | st.text(max_size=20))
    return body
