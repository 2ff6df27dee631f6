"""`forgeline validate` and the API server give one verdict, and name the same fields, on every
manifest of tests/invalid/ and examples/.

Each file goes through `kubectl apply --dry-run=server` (strict field validation, kubectl's
default) and through `forgeline validate`. Where the server judged the object, both must reject
or both accept, and the sets of field paths must be equal. The only exceptions are the files in
`EXCEPTIONS`, each with the reason only `forgeline validate` can judge it; the test also checks
that kubectl behaves as the reason says, so the list cannot hide a disagreement.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from testbed.kube import apply_crds

from forgeline.api.manifests import iter_documents
from forgeline.api.validate import validate_documents
from forgeline.cli.main import main

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
CORPUS = sorted((REPO / "tests" / "invalid").glob("*.yaml"))
MANIFESTS = CORPUS + sorted((REPO / "examples").rglob("*.yaml"))

# What kubectl does with an exception, checked for each: "accepts" (the server stores the object
# as it reads it), "refuses" (kubectl stops before any object reaches the server's validation),
# "rejects" (the server rejects what kubectl made of the file, for a reason of its own).
CROSS_OBJECT = ("accepts", "a rule across objects: only validate (and the operator) see the other documents")
DUPLICATE_KEY = ("accepts", "YAML forbids duplicate keys; kubectl's go-yaml silently keeps the last value")
YAML_SYNTAX = ("refuses", "not YAML kubectl can read: syntax, control characters, self-referencing or bomb aliases")
NOT_UTF8 = ("rejects", "not UTF-8: kubectl sends U+FFFD in place of the bytes, validate refuses the file")
EMPTY_FILE = ("refuses", "no object at all")
NOT_AN_OBJECT = ("refuses", "kubectl finds no object to send: not a mapping, or no usable apiVersion, kind or name")
BAD_METADATA = ("refuses", "kubectl cannot decode metadata whose labels are not a mapping of strings")
NOT_JSON = ("refuses", "NaN and infinities have no JSON form; kubectl cannot send them")
EXCEPTIONS: dict[str, tuple[str, str]] = {
    "11-missing-metadata-name": NOT_AN_OBJECT,
    "20-unknown-kind": NOT_AN_OBJECT,
    "21-unknown-api-version": NOT_AN_OBJECT,
    "22-missing-api-version": NOT_AN_OBJECT,
    "43-document-is-a-list": NOT_AN_OBJECT,
    "44-document-is-a-scalar": NOT_AN_OBJECT,
    "45-invalid-yaml": YAML_SYNTAX,
    "46-empty-file": EMPTY_FILE,
    "47-cycle": CROSS_OBJECT,
    "48-duplicate-name": CROSS_OBJECT,
    "50-not-utf8": NOT_UTF8,
    "51-kind-is-a-list": NOT_AN_OBJECT,
    "52-kind-is-a-mapping": NOT_AN_OBJECT,
    "53-learning-rate-nan": NOT_JSON,
    "54-learning-rate-inf": NOT_JSON,
    "55-eval-fraction-minus-inf": NOT_JSON,
    "57-zero-width-space-before-kind": NOT_AN_OBJECT,
    "69-duplicate-key": DUPLICATE_KEY,
    "70-duplicate-block": DUPLICATE_KEY,
    "71-billion-laughs": YAML_SYNTAX,
    "72-recursive-alias": YAML_SYNTAX,
    "74-name-is-a-number": NOT_AN_OBJECT,
    "75-metadata-is-a-list": NOT_AN_OBJECT,
    "85-tab-indentation": YAML_SYNTAX,
    "86-control-character": YAML_SYNTAX,
    "87-api-version-number": NOT_AN_OBJECT,
    "89-label-value-number": BAD_METADATA,
    "92-labels-is-a-list": BAD_METADATA,
}

# The server's own bookkeeping lines, which name no field of the manifest (the last one: 1.36+
# repeats a type error at path <nil>, after reporting it at the field's own path).
_NOT_A_FINDING = (
    "some validation rules were not checked",
    "must validate at least one schema (anyOf)",
    "Checked value must be of type",
)
_LISTED = re.compile(r"^\* (?P<path>\S+): ", re.MULTILINE)
_SINGLE = re.compile(r" is invalid: (?P<path>[^\s*]\S*): ")
_UNKNOWN = re.compile(r'(?:unknown|duplicate) field "(?P<path>[^"]+)"')


def _shown(path: str) -> str:
    """Field paths with invisible characters escaped, as `forgeline validate` prints them."""
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cf", "Cc", "Zl", "Zp") else c for c in path)


def server_verdict(cluster: Any, manifest: Path) -> tuple[str, set[str], str]:
    """("accepts" | "rejects" | "refuses", field paths the server named, kubectl's output)."""
    res = cluster.kubectl("apply", "--dry-run=server", "-f", str(manifest), check=False)
    out = res.stdout + res.stderr
    if res.returncode == 0:
        return "accepts", set(), out
    if "Error from server" not in out and " is invalid: " not in out:
        return "refuses", set(), out
    paths: set[str] = set()
    for line in out.splitlines():
        if any(note in line for note in _NOT_A_FINDING):
            continue
        for pattern in (_LISTED, _SINGLE, _UNKNOWN):
            paths.update(m["path"] for m in pattern.finditer(line))
    return "rejects", {"" if p == "<nil>" else _shown(p) for p in paths}, out


def validate_verdict(manifest: Path) -> tuple[str, set[str]]:
    exit_code = main(["validate", str(manifest)])
    _, problems = validate_documents(iter_documents([manifest]))
    assert (exit_code == 1) == bool(problems)
    return ("rejects" if problems else "accepts"), {p.error.path for p in problems}


def same_fields(ours: set[str], theirs: set[str]) -> bool:
    """Equal sets, where the server may name the first key inside a value of the wrong type
    (`spec.resources.env.NAME` for an env written as a mapping) and validate the value itself."""

    def ours_for(path: str) -> str:
        parent = path.rsplit(".", 1)[0]
        return parent if path not in ours and parent in ours else path

    return ours == {ours_for(p) for p in theirs}


@pytest.fixture(scope="module")
def installed_crds(cluster: Any) -> list[str]:
    return apply_crds(cluster, REPO / "crds")


def test_every_manifest_is_covered() -> None:
    assert len(MANIFESTS) >= 80
    assert set(EXCEPTIONS) <= {m.stem for m in MANIFESTS}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_validate_and_api_server_agree(
    cluster: Any, installed_crds: list[str], manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs, their_paths, out = server_verdict(cluster, manifest)
    ours, our_paths = validate_verdict(manifest)
    capsys.readouterr()
    if manifest.stem in EXCEPTIONS:
        kubectl_does, why = EXCEPTIONS[manifest.stem]
        assert ours == "rejects", f"validate accepts an exception ({why})"
        assert theirs == kubectl_does, f"listed as {why!r}, but kubectl {theirs}:\n{out}"
        return
    assert theirs != "refuses", f"kubectl refused the file before the server saw it; list it in EXCEPTIONS:\n{out}"
    assert ours == theirs, f"validate {ours} {our_paths}, the API server {theirs}:\n{out}"
    assert same_fields(our_paths, their_paths), f"validate names {our_paths}, the API server {their_paths}:\n{out}"
