"""Fuzzing against the real API server: whatever it stores, forgeline renders into objects it accepts.

Each generated manifest (tests/testbed/fuzzing.py: valid examples under structural mutations) is
created with server-side dry run. What the server refuses is simply refused; what it would store is
parsed as the operator parses it (an object validate refuses is failed by the operator with
InvalidSpec, never rendered), and the attempt it renders — ConfigMap, Service, PodGroup where the
cluster serves gang scheduling, batch Job — is created with server-side dry run too: every object
must be accepted. Nothing is persisted.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from testbed.fuzzing import FUZZ, mutated
from testbed.kube import apply_crds, new_namespace

from forgeline.api.chain import references_of
from forgeline.api.kinds import GROUP, KINDS, VERSION
from forgeline.api.stageconfig import ResolvedInput
from forgeline.api.validate import InvalidManifest, parse_job
from forgeline.operator.render import Owner, RenderSettings, render_attempt

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SEEN: dict[str, int] = {"refused by the server": 0, "stored, refused by forgeline": 0, "rendered and accepted": 0}


@pytest.fixture(scope="module")
def fuzz_ns(cluster: Any) -> Iterator[str]:
    apply_crds(cluster, REPO / "crds")
    core = client.CoreV1Api(cluster.client)
    ns = new_namespace(core, "fuzz")
    yield ns
    core.delete_namespace(ns)
    print(f"\nserver fuzz: {SEEN}")


def dry_run_create(cluster: Any, obj: dict[str, Any]) -> None:
    res = cluster.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(obj), check=False)
    assert res.returncode == 0, f"the API server refused what forgeline rendered: {res.stderr}\n{json.dumps(obj)}"


@settings(FUZZ, max_examples=100)
@given(body=mutated())
def test_whatever_the_api_server_stores_renders_into_objects_it_accepts(cluster: Any, fuzz_ns: str, body: Any) -> None:
    kind = body.get("kind") if isinstance(body, dict) else None
    if not isinstance(kind, str) or kind not in KINDS or not isinstance(body.get("metadata"), dict):
        return  # kubectl refuses these before any server sees them (tests/cluster/test_validate_parity.py)
    body = copy.deepcopy(body)
    body["metadata"]["namespace"] = fuzz_ns
    try:
        text = json.dumps(body, allow_nan=False)
    except ValueError:
        return  # NaN and infinities: JSON cannot carry them, so no client can send them
    api = client.CustomObjectsApi(cluster.client)
    try:
        stored = api.create_namespaced_custom_object(
            GROUP, VERSION, fuzz_ns, KINDS[body["kind"]].plural, json.loads(text), dry_run="All"
        )
    except ApiException as exc:
        assert exc.status in (400, 409, 422), exc  # refused with a reason, never a server error
        SEEN["refused by the server"] += 1
        return
    try:
        job = parse_job({k: stored[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in stored})
    except InvalidManifest:
        SEEN["stored, refused by forgeline"] += 1  # the operator fails it with InvalidSpec; nothing renders
        return
    metadata = stored["metadata"]
    owner = Owner(
        metadata.get("uid") or "uid-fuzz", dict(metadata.get("labels") or {}), dict(metadata.get("annotations") or {})
    )
    inputs = {ref.role: ResolvedInput(f"s3://store/{fuzz_ns}/upstream") for ref in references_of(job)}
    settings_ = RenderSettings(store="s3://store", gang_scheduling=bool(getattr(cluster, "gang_scheduling", False)))
    for obj in render_attempt(job, owner, 1, inputs, settings_):
        dry_run_create(cluster, obj)
    SEEN["rendered and accepted"] += 1
