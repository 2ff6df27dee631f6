"""The real parts of the test control plane: scheduler, Job controller, garbage collector, kwok."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from testbed.kube import (
    EXIT_CODE_ANNOTATION,
    ON_GPU_NODE,
    OUTCOME_LABEL,
    events_for,
    pod_phase,
    wait_for,
)

pytestmark = pytest.mark.cluster


def gpu_pod(name: str, gpus: int, labels: dict | None = None, annotations: dict | None = None) -> dict:
    return {
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            **ON_GPU_NODE,
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "trainer:test", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
            ],
        },
    }


def test_pod_asking_for_more_gpus_than_a_node_has_stays_pending_with_failed_scheduling(core, ns):
    core.create_namespaced_pod(ns, gpu_pod("too-big", gpus=9))

    event = wait_for(
        lambda: next((e for e in events_for(core, ns, "too-big") if e.reason == "FailedScheduling"), None),
        timeout=30,
        what="a FailedScheduling event",
    )
    assert "Insufficient nvidia.com/gpu" in event.message
    assert pod_phase(core, ns, "too-big") == "Pending"


def test_indexed_job_of_four_gpu_pods_succeeds(cluster, core, ns):
    batch: Any = client.BatchV1Api(cluster.client)
    template = gpu_pod("unused", gpus=8)
    # kwok would complete each pod at once and free its GPUs for the next; holding them for a few
    # seconds makes the four run together, as a gang does, so each needs a node of its own.
    template["metadata"] = {"annotations": {"testbed.forgeline.io/delay": "5s"}}
    job = {
        "metadata": {"name": "gang"},
        "spec": {
            "completions": 4,
            "parallelism": 4,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": template,
        },
    }
    batch.create_namespaced_job(ns, job)

    done = wait_for(
        lambda: (s := batch.read_namespaced_job_status("gang", ns).status).succeeded == 4 and s,
        timeout=60,
        what="4 succeeded pods",
    )
    assert any(c.type == "Complete" and c.status == "True" for c in done.conditions)
    pods = core.list_namespaced_pod(ns, label_selector="job-name=gang").items
    assert {p.spec.node_name for p in pods} <= {f"gpu-{i}" for i in range(4)}
    assert len({p.spec.node_name for p in pods}) == 4  # 8 GPUs each: one pod per node


def test_pod_kwok_fails_reports_exit_code_137(core, ns):
    pod = gpu_pod("oom", gpus=1, labels={OUTCOME_LABEL: "fail"}, annotations={EXIT_CODE_ANNOTATION: "137"})
    core.create_namespaced_pod(ns, pod)

    status = wait_for(
        lambda: (s := core.read_namespaced_pod("oom", ns).status).phase == "Failed" and s,
        timeout=30,
        what="the pod to fail",
    )
    assert status.container_statuses[0].state.terminated.exit_code == 137


def test_evicted_pod_fails_with_disruption_target_condition(core, ns):
    core.create_namespaced_pod(ns, gpu_pod("evicted", gpus=1, labels={OUTCOME_LABEL: "evict"}))

    status = wait_for(
        lambda: (s := core.read_namespaced_pod("evicted", ns).status).phase == "Failed" and s,
        timeout=30,
        what="the pod to be evicted",
    )
    assert any(c.type == "DisruptionTarget" and c.status == "True" for c in status.conditions)


def test_garbage_collector_deletes_children_of_a_deleted_owner(core, ns):
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for i in range(3):
        core.create_namespaced_config_map(ns, {"metadata": {"name": f"child-{i}", "ownerReferences": [ref]}})

    core.delete_namespaced_config_map("owner", ns, propagation_policy="Background")

    wait_for(
        lambda: not [c for c in core.list_namespaced_config_map(ns).items if c.metadata.name.startswith("child-")],
        timeout=60,
        what="the garbage collector to delete the children",
    )
