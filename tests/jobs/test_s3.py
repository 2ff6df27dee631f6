"""A stage writes its artifact and checkpoints to a real S3 server (credentials enforced) and the
next stage reads it back from there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import pretrain_config, run_stage

pytestmark = [pytest.mark.train, pytest.mark.timeout(900)]


def small_pretrain(output_uri: str, endpoint: str) -> dict[str, Any]:
    cfg = pretrain_config(output_uri, max_steps=20, checkpoint_interval=10, log_interval=5)
    cfg["data"]["synthetic"]["examples"] = 600
    cfg["storage"] = {"endpoint": endpoint}
    return cfg


def test_stage_writes_to_and_reads_from_s3_with_credentials(s3: Any, tmp_path: Path) -> None:
    # Credentials from the standard AWS variables, the endpoint from the config only.
    env = {k: v for k, v in s3.env().items() if k != "AWS_ENDPOINT_URL"}
    base = f"s3://{s3.bucket}/jobs-test/base"
    first = run_stage(tmp_path / "first", small_pretrain(base, s3.endpoint), env=env)
    assert first.rc == 0, first.explain()
    assert first.of("checkpoint")[0]["uri"] == f"{base}/checkpoints/step-10"

    client = s3.client()
    manifest = client.get_object(Bucket=s3.bucket, Key="jobs-test/base/_MANIFEST.json")["Body"].read()
    assert {f["path"] for f in json.loads(manifest)["files"]} >= {"model.safetensors", "tokenizer.json"}
    client.head_object(Bucket=s3.bucket, Key="jobs-test/base/checkpoints/step-10/_MANIFEST.json")

    cont = small_pretrain(f"s3://{s3.bucket}/jobs-test/continued", s3.endpoint)
    cont.pop("model_config")
    cont["model"] = {"uri": base, "digest": "sha256:" + first.of("result")[0]["manifest_sha256"]}
    second = run_stage(tmp_path / "second", cont, env=env)
    assert second.rc == 0, second.explain()
    lineage = json.loads(client.get_object(Bucket=s3.bucket, Key="jobs-test/continued/_MANIFEST.json")["Body"].read())[
        "inputs"
    ]["model"]
    assert lineage == {"uri": base, "manifest_sha256": first.of("result")[0]["manifest_sha256"]}
    # continued training starts from the stored weights, not from scratch
    assert second.metrics["eval_loss_initial"] < first.metrics["eval_loss_initial"] - 1.0
