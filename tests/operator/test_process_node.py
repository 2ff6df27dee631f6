"""A real PretrainJob through the operator: two pods on the process node run torchrun across two
"nodes" over gloo, write the artifact to the store and report its digest in the termination
message, which the operator copies into status.output."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from testbed.processnode import PROCESS_NODE_LABEL

pytestmark = [pytest.mark.cluster, pytest.mark.train, pytest.mark.timeout(600)]

ON_PROCESS_NODE = {
    "nodeSelector": {PROCESS_NODE_LABEL: "true"},
    "tolerations": [{"key": PROCESS_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}


def test_two_node_pretrain_on_the_process_node_succeeds_with_its_digest(
    jobs: Any, manifest: Any, cond: Any, operator: Any
) -> None:
    body = manifest("real", outcome=None, nodes=2, gpus=0, procsPerNode=1, **ON_PROCESS_NODE)
    body["spec"]["training"] = {"maxSteps": 6, "batchSize": 4, "checkpointInterval": 3, "logInterval": 1}
    body["spec"]["data"] = {"synthetic": {"examples": 120, "seed": 1}}
    body["spec"]["runPolicy"] = {"backoffLimit": 0, "startupDeadlineSeconds": 120}
    jobs.create(body)
    try:
        status = jobs.wait("real", lambda s: s.get("state") in ("Succeeded", "Failed"), timeout=500, what="to finish")
    except AssertionError:
        raise AssertionError(f"operator log:\n{operator.log()}") from None
    assert status["state"] == "Succeeded", cond(status, "Failed")
    output = status["output"]
    assert output["uri"] == f"{operator.store}/{jobs.ns}/pretrainjob/real"
    assert status["restarts"] == 0 and status["attempt"] == 1
    manifest_file = Path(output["uri"].removeprefix("file://")) / "_MANIFEST.json"
    expected = "sha256:" + hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    assert output["digest"] == expected, "the digest came through rank 0's termination message"


def test_checkpoint_interval_zero_trains_through_the_operator_without_periodic_checkpoints(
    jobs: Any, manifest: Any, cond: Any
) -> None:
    body = manifest("nockpt", outcome=None, nodes=2, gpus=0, procsPerNode=1, **ON_PROCESS_NODE)
    body["spec"]["training"] = {"maxSteps": 6, "batchSize": 4, "checkpointInterval": 0, "logInterval": 1}
    body["spec"]["data"] = {"synthetic": {"examples": 120, "seed": 3}}
    body["spec"]["runPolicy"] = {"backoffLimit": 0, "startupDeadlineSeconds": 120}
    jobs.create(body)
    status = jobs.wait("nockpt", lambda s: s.get("state") in ("Succeeded", "Failed"), timeout=500, what="to finish")
    assert status["state"] == "Succeeded", cond(status, "Failed")
    output = Path(status["output"]["uri"].removeprefix("file://"))
    assert (output / "_MANIFEST.json").is_file()
    assert not (output / "checkpoints").exists(), "checkpointInterval 0 writes no periodic checkpoint"


def test_storage_credentials_reach_the_trainer_only_through_the_secret(
    jobs: Any, manifest: Any, cond: Any, s3: Any
) -> None:
    jobs.core.create_namespaced_secret(
        jobs.ns,
        {
            "metadata": {"name": "s3-creds"},
            "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
        },
    )
    body = manifest("ons3", outcome=None, nodes=2, gpus=0, procsPerNode=1, **ON_PROCESS_NODE)
    body["spec"]["resources"]["env"] = [{"name": "AWS_DEFAULT_REGION", "value": s3.region}]
    body["spec"]["storage"] = {
        "outputUri": f"s3://{s3.bucket}/{jobs.ns}/ons3",
        "credentialsSecret": "s3-creds",
        "endpoint": s3.endpoint,
    }
    body["spec"]["training"] = {"maxSteps": 4, "batchSize": 4, "checkpointInterval": 2, "logInterval": 1}
    body["spec"]["data"] = {"synthetic": {"examples": 120, "seed": 2}}
    body["spec"]["runPolicy"] = {"backoffLimit": 0}
    jobs.create(body)
    status = jobs.wait("ons3", lambda s: s.get("state") in ("Succeeded", "Failed"), timeout=500, what="to finish")
    assert status["state"] == "Succeeded", cond(status, "Failed")
    assert status["output"]["uri"] == f"s3://{s3.bucket}/{jobs.ns}/ons3"
    manifest_key = f"{jobs.ns}/ons3/_MANIFEST.json"
    assert s3.client().head_object(Bucket=s3.bucket, Key=manifest_key)["ContentLength"] > 0
    job = jobs.batch.read_namespaced_job("ons3-pretrain-a1", jobs.ns)
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["AWS_SECRET_ACCESS_KEY"].value is None
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "s3-creds"
    assert s3.secret_key not in str(job.to_dict())


def test_a_missing_credentials_secret_fails_after_the_startup_deadline(jobs: Any, manifest: Any, cond: Any) -> None:
    body = manifest("nocreds", outcome=None, nodes=1, gpus=0, **ON_PROCESS_NODE)
    body["spec"]["storage"] = {"credentialsSecret": "not-there"}
    body["spec"]["runPolicy"] = {"startupDeadlineSeconds": 5, "backoffLimit": 0}
    jobs.create(body)
    status = jobs.wait_state("nocreds", "Failed", timeout=120)
    failed = cond(status, "Failed")
    # A kubelet keeps such a pod Pending (-> the startup deadline, reason CreateContainerConfigError);
    # the process node fails it instead (-> a retryable failure, no budget left). Either way the
    # condition names the pod-level cause and the missing secret.
    assert failed["reason"] in ("CreateContainerConfigError", "BackoffLimitExceeded"), failed
    assert "CreateContainerConfigError" in failed["message"] and "not-there" in failed["message"]
