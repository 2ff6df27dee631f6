"""crds/ is generated from the models, structural, bounded, and current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from forgeline.api.crd import CATEGORY, crd_for, render_crds
from forgeline.api.kinds import KINDS

CRD_DIR = Path(__file__).parents[2] / "crds"


def test_crds_directory_is_current() -> None:
    files = render_crds()
    on_disk = {p.name for p in CRD_DIR.glob("*.yaml")}
    assert on_disk == set(files), "crds/ holds other files than the models generate; run `forgeline crds`"
    for name, text in files.items():
        assert (CRD_DIR / name).read_text() == text, f"crds/{name} is stale; run `forgeline crds`"


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, sub in node.get("properties", {}).items():
            out.extend(walk(sub, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            out.extend(walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            out.extend(walk(node["additionalProperties"], f"{path}{{}}"))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_schema_is_structural_and_bounded(kind: str) -> None:
    schema = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    for banned in ("$ref", "$defs", "title:", "uniqueItems", "const:", "anyOf: [{type: 'null'}"):
        assert banned not in text, banned
    for path, node in walk(schema):
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node and "maxLength" in node, path
            continue
        if path.endswith(".metadata") or node.get("x-kubernetes-preserve-unknown-fields"):
            continue
        assert "type" in node, f"{path} has no type"
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node, f"{path}: unbounded string"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path}: unbounded list"
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: unbounded map"


@pytest.mark.parametrize("kind", list(KINDS))
def test_crd_has_printer_columns_status_and_category(kind: str) -> None:
    crd = crd_for(kind)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0]
    assert columns == ["State", "Reason", "Attempt", "Restarts", "Progress", "Age"]
    wide = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 1]
    assert wide == ["Output", "Evictions", "Nodes"]
    assert CATEGORY in crd["spec"]["names"]["categories"]
    assert crd["spec"]["names"]["shortNames"]


def test_cel_rules_cover_model_source_nodes_reserved_env_and_immutability() -> None:
    text = json.dumps(crd_for("PretrainJob"))
    assert "(has(self.fromJob) ? 1 : 0) + (has(self.uri) ? 1 : 0) + (has(self.config) ? 1 : 0) == 1" in text
    assert "!self.name.startsWith('PET_')" in text
    assert "self == oldSelf" in text
    nodes = crd_for("PretrainJob")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["resources"]["properties"]["nodes"]
    assert nodes["minimum"] == 1 and nodes["default"] == 1
    run_policy = crd_for("PretrainJob")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["runPolicy"]
    rules = [r["rule"] for r in run_policy.get("x-kubernetes-validations", [])]
    assert "self == oldSelf" not in rules, "runPolicy stays mutable (suspend, deadlines)"


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_property_has_a_description_for_kubectl_explain(kind: str) -> None:
    """One exemption: the root metadata, whose schema the API server owns and refuses to be told more
    than `type: object` about (a description included)."""
    schema = crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [
        f"{path}.{name}"
        for path, node in walk(schema, kind)
        for name, sub in node.get("properties", {}).items()
        if not str(sub.get("description", "")).strip() and not (node is schema and name == "metadata")
    ]
    assert not missing, f"properties without a description (add Field(description=...)): {missing}"
    assert str(schema.get("description", "")).strip(), f"{kind} has no description"
