"""Fuzzing as a test: generated manifests never crash `forgeline validate` or the operator's pure path.

Two sources of input: structured mutations of the valid examples (a leaf of another type, extreme
numbers, unicode look-alikes and invisible characters, a key removed or added, deep nesting, a list
where a mapping goes), and raw bytes or text fed to the YAML loader. Properties:

- validate's code path (load the file, validate the documents) ends in jobs or in problems that
  name the file and say what is wrong, never in any other exception;
- every job that parses goes through decide() and the attempt render without raising, and what they
  produce is JSON with label and annotation keys and label values the API server accepts.

Derandomized, so CI runs the same examples every time.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st
from testbed.builders import T0, observed, upstream_status
from testbed.fuzzing import FUZZ, LABEL_VALUE, QUALIFIED_NAME, SETTINGS, mutated

from forgeline.api.chain import references_of
from forgeline.api.manifests import iter_documents, load_documents
from forgeline.api.stageconfig import ResolvedInput
from forgeline.api.validate import InvalidManifest, parse_job, validate_documents
from forgeline.operator.decide import decide
from forgeline.operator.render import Owner, render_attempt


def _validate_file(path: Path) -> tuple[list[Any], list[Any]]:
    """`forgeline validate`'s code path; every problem names the file and says what is wrong."""
    jobs, problems = validate_documents(iter_documents([path]))
    assert jobs or problems
    for problem in problems:
        assert problem.source.startswith(str(path)), problem
        assert problem.error.message.strip(), problem
    return jobs, problems


def _metadata_accepted(metadata: dict[str, Any]) -> bool:
    labels, annotations = metadata.get("labels") or {}, metadata.get("annotations") or {}
    return (
        isinstance(labels, dict)
        and isinstance(annotations, dict)
        and all(QUALIFIED_NAME.match(k) and isinstance(v, str) and LABEL_VALUE.match(v) for k, v in labels.items())
        and all(QUALIFIED_NAME.match(k) for k in annotations)
    )


def _assert_renderable(obj: Any) -> None:
    """JSON the API server can decode, with metadata it accepts (at any depth: pod templates too)."""
    json.dumps(obj, allow_nan=False)
    if isinstance(obj, dict):
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            for key, value in (metadata.get("labels") or {}).items():
                assert QUALIFIED_NAME.match(key), f"label key {key!r}"
                assert len(key.split("/")[0]) <= 253
                assert isinstance(value, str) and LABEL_VALUE.match(value), f"label {key}={value!r}"
            for key in metadata.get("annotations") or {}:
                assert QUALIFIED_NAME.match(key), f"annotation key {key!r}"
        for child in obj.values():
            _assert_renderable(child)
    elif isinstance(obj, list):
        for child in obj:
            _assert_renderable(child)


def _operator_pass(body: dict[str, Any], *, render: bool) -> None:
    """decide() on the job object as the API server would store it, and the attempt render of a
    job validate passed (one with problems is failed by the operator's preflight, never rendered)."""
    stored = copy.deepcopy(body)
    metadata = stored["metadata"]
    metadata.setdefault("namespace", "default")
    metadata.update(uid="uid-fuzz", generation=1)
    if not _metadata_accepted(metadata):
        return  # the API server validates any object's metadata: the operator never sees this one
    try:
        job = parse_job(stored)
    except InvalidManifest:
        return  # the stored form (a namespace, a uid added) is what is invalid: nothing to run
    uri = "s3://store/default/pretrainjob/base"
    roles = [ref.role for ref in references_of(job)]
    upstreams: dict[str, Any] = {role: upstream_status("Succeeded", {"uri": uri}) for role in roles}
    plan = decide(job, observed(stored, upstreams=upstreams, now=T0), SETTINGS)
    _assert_renderable(plan.apply)
    event(f"decide applied {len(plan.apply)} object(s)")
    json.dumps(plan.status, allow_nan=False)
    if not render:
        return
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    owner = Owner("uid-fuzz", dict(labels), dict(annotations))
    inputs = {role: ResolvedInput(uri) for role in roles}
    _assert_renderable(render_attempt(job, owner, 1, inputs, SETTINGS))
    event("rendered an attempt")


@pytest.fixture(scope="module")
def manifest_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "manifest.yaml"


@settings(FUZZ, max_examples=3000)
@given(body=mutated())
def test_mutated_examples_yield_jobs_or_problems_and_jobs_render(manifest_file: Path, body: Any) -> None:
    manifest_file.write_text(yaml.safe_dump(body, allow_unicode=True, sort_keys=False), encoding="utf-8")
    jobs, problems = _validate_file(manifest_file)
    if jobs:  # one document: the job it parsed into, run as the operator would run it
        (document,) = load_documents(manifest_file)
        _operator_pass(document.body, render=not problems)


@FUZZ
@given(data=st.binary(max_size=400))
def test_raw_bytes_yield_jobs_or_problems(manifest_file: Path, data: bytes) -> None:
    manifest_file.write_bytes(data)
    _validate_file(manifest_file)


YAML_ALPHABET = st.sampled_from(list(":-[]{}&*!|>'\"%@`#,? \n\t\\ka0\u200b\u0430"))


@FUZZ
@given(text=st.text(YAML_ALPHABET, max_size=200) | st.text(max_size=200))
def test_random_text_yields_jobs_or_problems(manifest_file: Path, text: str) -> None:
    manifest_file.write_text(text, encoding="utf-8")
    _validate_file(manifest_file)


@settings(FUZZ, max_examples=300)
@given(body=mutated(), prefix=st.text(YAML_ALPHABET, max_size=30))
def test_valid_documents_behind_garbage_yield_problems(manifest_file: Path, body: Any, prefix: str) -> None:
    """A mutated document after a stray line: a half-broken file, as a bad merge leaves it."""
    manifest_file.write_text(prefix + "\n" + yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    _validate_file(manifest_file)
