"""Gang placement on the real control plane: the operator gives each attempt a PodGroup (in-tree
gang scheduling, scheduling.k8s.io/v1alpha2) and kube-scheduler binds all of its pods or none.

The session's cluster has four 8-GPU kwok nodes, so one 3-node job of whole nodes fits and a
second one does not until the first finishes. A cluster without the API (gates off) runs jobs as
before, and the operator says so once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from testbed.kube import OUTCOME_LABEL, wait_for
from testbed.launcher import ClusterOptions, start_cluster
from testbed.operator import pretrain_manifest

from forgeline.operator.client import KubeClient

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

GPUS_PER_NODE = 8


@pytest.fixture
def gang_cluster(cluster: Any) -> Any:
    assert cluster.gang_scheduling, f"{cluster.bin_dir} predates the Workload/PodGroup API (needs 1.36+)"
    return cluster


class Bindings:
    """Every (pod, node) binding of one job's pods seen by a watch, and whether each came before
    `released` was set (the test sets it when it lets the job ahead finish)."""

    def __init__(self, core: client.CoreV1Api, ns: str, job: str) -> None:
        self.core, self.ns, self.job = core, ns, job
        self.released = threading.Event()
        self.early: list[tuple[str, str]] = []
        self.late: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    self.core.list_namespaced_pod,
                    self.ns,
                    label_selector=f"forgeline.io/job={self.job}",
                    timeout_seconds=5,
                ):
                    self._see(event["object"])
                    if self._stop.is_set():
                        w.stop()
            except client.ApiException:
                continue
            # A watch that ended (timeout) starts over with a list, so nothing falls in between.
            for pod in self.core.list_namespaced_pod(self.ns, label_selector=f"forgeline.io/job={self.job}").items:
                self._see(pod)

    def _see(self, pod: Any) -> None:
        node = pod.spec.node_name
        if not node:
            return
        if self.released.is_set():
            self.late[pod.metadata.name] = node
        elif (pod.metadata.name, node) not in self.early:
            self.early.append((pod.metadata.name, node))

    def __enter__(self) -> Bindings:
        for pod in self.core.list_namespaced_pod(self.ns, label_selector=f"forgeline.io/job={self.job}").items:
            self._see(pod)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def scheduling(cluster: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.client)


def unschedulable(pod: Any) -> bool:
    return any(c.type == "PodScheduled" and c.status == "False" for c in pod.status.conditions or [])


def test_the_operator_finds_the_gang_api_and_says_so_once(gang_cluster: Any, operator: Any) -> None:
    assert KubeClient(gang_cluster.client).serves_pod_groups()
    assert operator.log_path.read_text().count("gang placement on") == 1, operator.log()


def test_a_gang_that_does_not_fit_waits_unbound_and_starts_when_the_first_finishes(
    gang_cluster: Any, jobs: Any, manifest: Any, cond: Any, scheduling: client.CustomObjectsApi
) -> None:
    jobs.create(manifest("first", nodes=3, gpus=GPUS_PER_NODE))
    jobs.wait_state("first", "Running")
    group = scheduling.get_namespaced_custom_object(
        "scheduling.k8s.io", "v1alpha2", jobs.ns, "podgroups", "first-pretrain-a1"
    )
    assert group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 3}}
    assert group["metadata"]["ownerReferences"][0]["name"] == "first"
    with Bindings(jobs.core, jobs.ns, "second") as second:
        jobs.create(manifest("second", outcome=None, nodes=3, gpus=GPUS_PER_NODE))
        # The scheduler has tried every pod of the waiting gang and placed none.
        wait_for(
            lambda: len(pods := jobs.pods("second")) == 3 and all(map(unschedulable, pods)),
            timeout=60,
            what="the second gang's three pods to be tried and held",
        )
        waiting = jobs.wait("second", lambda s: cond(s, "Running").get("reason") == "Unschedulable", what="waiting")
        assert waiting["state"] == "Created"
        assert len({p.spec.node_name for p in jobs.pods("first")}) == 3
        assert second.early == [], f"pods of the waiting gang were bound: {second.early}"
        # Let the first job's pods complete (kwok: a Job's pod without an outcome succeeds).
        second.released.set()
        for pod in jobs.pods("first"):
            jobs.core.patch_namespaced_pod(pod.metadata.name, jobs.ns, {"metadata": {"labels": {OUTCOME_LABEL: None}}})
        jobs.wait_state("first", "Succeeded")
        jobs.wait_state("second", "Succeeded", timeout=90)
        wait_for(lambda: len(second.late) == 3, timeout=30, what="all three bindings of the second gang seen")
    assert second.early == [], f"pods of the waiting gang were bound before the first finished: {second.early}"
    assert len(set(second.late.values())) == 3, "one pod per 8-GPU node"


def test_a_gang_larger_than_the_cluster_fails_after_its_startup_deadline_with_the_schedulers_reason(
    gang_cluster: Any, jobs: Any, manifest: Any, cond: Any
) -> None:
    nodes = gang_cluster.options.gpu_nodes + 1
    jobs.create(manifest("huge", nodes=nodes, gpus=GPUS_PER_NODE, run_policy={"startupDeadlineSeconds": 5}))
    wait_for(
        lambda: len(pods := jobs.pods("huge")) == nodes and all(map(unschedulable, pods)),
        timeout=60,
        what="every pod of the gang to be held unbound",
    )
    assert not [p.metadata.name for p in jobs.pods("huge") if p.spec.node_name], "no part of the gang is bound"
    status = jobs.wait_state("huge", "Failed", timeout=60)
    failed = cond(status, "Failed")
    assert failed["reason"] == "Unschedulable", failed
    assert f"0 of {nodes} pods running after startupDeadlineSeconds (5s)" in failed["message"]
    assert "Insufficient nvidia.com/gpu" in failed["message"], failed["message"]
    wait_for(lambda: not jobs.pods("huge"), timeout=30, what="the held pods to be deleted")


def test_without_the_gang_api_jobs_run_as_before_and_the_operator_says_so_once(
    other_cluster_jobs: Any, tmp_path: Path
) -> None:
    with start_cluster(ClusterOptions(gang_scheduling=False)) as plain:
        assert not plain.gang_scheduling
        assert not KubeClient(plain.client).serves_pod_groups()
        jobs = other_cluster_jobs(plain)
        jobs.create(pretrain_manifest("plain", nodes=3, gpus=GPUS_PER_NODE))
        jobs.wait_state("plain", "Running")
        assert all(p.spec.scheduling_group is None for p in jobs.pods("plain"))
        log = (tmp_path / "operator-1.log").read_text()
        assert log.count("gang placement off") == 1, log[-4000:]
        assert "does not serve scheduling.k8s.io/v1alpha2 PodGroups" in log
