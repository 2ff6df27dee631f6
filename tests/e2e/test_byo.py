"""Bring your own model, on a cluster: the BYO example through the operator, from S3.

examples/byo/make_checkpoint.py builds a plain Hugging Face checkpoint (no _MANIFEST.json) and chat
and preference data; they are uploaded into the namespace's prefix of the seaweedfs store, and
examples/byo/pipeline.yaml (pointed there) is applied as it is: LoRA on chat messages, a reward
model, DPO on the LoRA output, as real torchrun gangs on the process node. The operator pins the
plain directory by the digest of its files (status.inputs), the stage records the same digest in
its manifest, and every output, downloaded, loads and generates in a fresh process with plain
transformers/peft.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from testbed.hfload import load_in_fresh_process
from testbed.kube import wait_for
from testbed.operator import OperatorProcess, store_namespace, store_operator

from forgeline.jobs import storage as st

pytestmark = [pytest.mark.cluster, pytest.mark.train, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_ROOT = "file:///tmp/forgeline-byo"  # where the example expects make_checkpoint's output
SECRET = "forgeline-store"
STAGES = {"chat-tuned": "lorajobs", "judge": "rewardmodeljobs", "preferred": "rlhfjobs"}


@pytest.fixture
def byo_ns(cluster: Any, s3: Any) -> Iterator[str]:
    ns = store_namespace(cluster, s3, "byo", SECRET)
    core = client.CoreV1Api(cluster.client)
    yield ns
    core.delete_namespace(ns)


@pytest.fixture
def operator(cluster: Any, s3: Any, byo_ns: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = store_operator(cluster, s3, byo_ns, tmp_path / "operator", SECRET)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def upload_dir(s3: Any, local: Path, prefix: str) -> None:
    s3c = s3.client()
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        s3c.upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


def download_dir(s3: Any, prefix: str, local: Path) -> Path:
    s3c = s3.client()
    for page in s3c.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1 :]
            if rel.startswith("checkpoints/"):
                continue
            target = local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            s3c.download_file(s3.bucket, obj["Key"], str(target))
    return local


def test_byo_example_through_the_operator_from_s3_and_the_outputs_load_anywhere(
    cluster: Any, s3: Any, byo_ns: str, operator: OperatorProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "byo"
    subprocess.run([sys.executable, str(REPO / "examples/byo/make_checkpoint.py"), str(data)], check=True, timeout=300)
    root = f"s3://{s3.bucket}/{byo_ns}/byo"
    upload_dir(s3, data, f"{byo_ns}/byo")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text((REPO / "examples/byo/pipeline.yaml").read_text().replace(EXAMPLE_ROOT, root))
    cluster.kubectl("apply", "-n", byo_ns, "-f", str(pipeline))

    api = client.CustomObjectsApi(cluster.client)

    def status(name: str) -> dict[str, Any]:
        obj = api.get_namespaced_custom_object("forgeline.io", "v1alpha1", byo_ns, STAGES[name], name)
        return dict(obj.get("status") or {})

    def all_done() -> dict[str, dict[str, Any]] | None:
        states = {name: status(name) for name in STAGES}
        failed = [n for n, s in states.items() if s.get("state") == "Failed"]
        assert not failed, f"{failed} failed: {json.dumps(states[failed[0]], indent=1)}\n{operator.log()[-3000:]}"
        return states if all(s.get("state") == "Succeeded" for s in states.values()) else None

    states = wait_for(all_done, timeout=780, interval=2, what="the BYO pipeline to succeed")

    # The plain directory's digest, computed from its files, is the lineage the operator recorded
    # (status.inputs) and the one the stage pinned and recorded in its manifest.
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    storage = st.Storage(s3.endpoint)
    _, plain = st.read_manifest(storage, f"{root}/model")
    tuned_inputs = {i["role"]: i for i in states["chat-tuned"]["inputs"]}
    assert tuned_inputs["model"]["uri"] == f"{root}/model"
    assert tuned_inputs["model"]["digest"] == f"sha256:{plain}"
    tuned_manifest, tuned_digest = st.read_manifest(storage, states["chat-tuned"]["output"]["uri"])
    assert tuned_manifest.inputs["model"]["manifest_sha256"] == plain
    assert states["preferred"]["inputs"][0]["digest"] == f"sha256:{tuned_digest}"

    base_uri = f"{root}/model"
    outputs = {name: s["output"]["uri"] for name, s in states.items()}
    local = {
        name: download_dir(s3, uri.removeprefix(f"s3://{s3.bucket}/"), tmp_path / "out" / name)
        for name, uri in outputs.items()
    }
    loaded = load_in_fresh_process(
        [
            {
                "path": str(local[name]),
                "kind": "reward" if name == "judge" else "lm",
                "base": base_uri,
                "base_path": str(data / "model"),
            }
            for name in STAGES
        ],
        tmp_path,
    )
    assert loaded and all(n >= 1 for n in loaded.values()), loaded
