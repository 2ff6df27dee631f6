"""Pydantic models -> CustomResourceDefinitions (crds/*.yaml).

The API server accepts only structural schemas: no $ref, no titles, no `additionalProperties`
beside `properties`, OpenAPI-v3 boolean exclusive bounds. Pydantic emits JSON Schema 2020, so
this module inlines references and rewrites the rest. Rules declared on the models arrive as
`x-kubernetes-validations`; immutability and the name rule are added here, at the level they
apply to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from forgeline.api.fields import DNS_LABEL, MAX_JOB_NAME
from forgeline.api.kinds import GROUP, IMMUTABLE_BLOCKS, KINDS, VERSION, JobStatus

CATEGORY = "llmjobs"
# `kubectl get llmjobs`: the same columns for the five kinds, so the category's tables line up.
# Reason is the first condition that is False: InputsReady while Waiting, Running's (the pod-level
# cause, or the failure's, which the operator copies there when a job finishes) otherwise. The
# output URI is long (s3://bucket/namespace/kind/name) and read once per job: `-o wide`.
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "State", "type": "string", "jsonPath": ".status.state"},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.status=="False")].reason'},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Output", "type": "string", "jsonPath": ".status.output.uri", "priority": 1},
    {"name": "Evictions", "type": "integer", "jsonPath": ".status.evictions", "priority": 1},
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.resources.nodes", "priority": 1},
]
_DROP = {"title", "$defs", "propertyNames", "discriminator"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs and rewrite pydantic's JSON Schema 2020 into a structural OpenAPI v3 schema."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"unions are not structural: {branches}")
        node = {**branches[0], **node}
        if "$ref" in node:
            return _resolve(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _resolve(value, defs)
        elif key == "additionalProperties":
            continue  # false: pruning closes objects anyway; true: preserve-unknown-fields says it
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "default":
            if value is None:
                continue
            out[key] = {} if isinstance(value, dict) else value
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out["type"] = "object"
    return out


def _schema_of(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _resolve(raw, raw.get("$defs", {}))


def _immutable(spec: dict[str, Any]) -> None:
    for name in IMMUTABLE_BLOCKS:
        block = spec["properties"].get(name)
        if block is not None:
            block.setdefault("x-kubernetes-validations", []).append(
                {
                    "rule": "self == oldSelf",
                    "message": f"spec.{name} is immutable; only spec.runPolicy can change after creation "
                    "(create a new job instead)",
                }
            )


def crd_for(kind: str) -> dict[str, Any]:
    cls = KINDS[kind]
    schema = _schema_of(cls)
    spec = schema["properties"]["spec"]
    _immutable(spec)
    root_rules = list(schema.get("x-kubernetes-validations", []))
    openapi = {
        "type": "object",
        "description": (cls.__doc__ or "").strip() or f"A forgeline {kind}.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "maxLength": 64, "description": f"{GROUP}/{VERSION}"},
            "kind": {"type": "string", "maxLength": 64, "description": kind},
            # The API server owns metadata's schema and allows only `name` (and generateName) under
            # it. Declaring the name's bounds there (rather than as a root CEL rule) makes the server
            # report the path metadata.name, as `forgeline validate` does.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": MAX_JOB_NAME,
                        "pattern": DNS_LABEL,
                        "description": f"a DNS label (lowercase letters, digits and '-', starting with a letter) "
                        f"of at most {MAX_JOB_NAME} characters: it names the job's pods and Service",
                    }
                },
            },
            "spec": spec,
            "status": _schema_of(JobStatus),
        },
        "x-kubernetes-validations": root_rules,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{cls.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": cls.plural,
                "singular": kind.lower(),
                "shortNames": list(cls.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi},
                }
            ],
        },
    }


def render_crds() -> dict[str, str]:
    """File name -> YAML text, one file per kind."""
    header = "# Generated by `forgeline crds` from forgeline.api; do not edit.\n"
    return {
        f"{GROUP}_{KINDS[k].plural}.yaml": header + yaml.safe_dump(crd_for(k), sort_keys=False, width=120)
        for k in KINDS
    }


def write_crds(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_crds().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
