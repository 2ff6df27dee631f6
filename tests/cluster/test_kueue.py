"""forgeline under a real Kueue (built from its Go module, see testbed/kueue.py): a PretrainJob
labelled with a queue becomes a batch Job that Kueue holds suspended until it admits it, against
the nvidia.com/gpu quota of the session's ClusterQueue (16 GPUs: two 8-GPU nodes). While it waits,
its Running condition quotes the Workload's reason; a running gang that Kueue preempts for a
higher-priority job restarts as a new attempt, counted as an eviction, and runs again when the
quota is back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from testbed.kube import OUTCOME_LABEL, apply_crds, new_namespace, wait_for
from testbed.kueue import GROUP as KUEUE_GROUP
from testbed.kueue import PRIORITY_LABEL, QUEUE_LABEL
from testbed.kueue import VERSION as KUEUE_VERSION
from testbed.operator import OperatorProcess, pretrain_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "forgeline.io", "v1alpha1", "pretrainjobs"
NS_PREFIX = "kq"


@pytest.fixture(scope="module")
def forgeline(cluster: Any, kueue: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator for this module's namespaces only (other suites run operators of their own)."""
    apply_crds(cluster, REPO / "crds")
    workdir = tmp_path_factory.mktemp("kueue-operator")
    args = [
        f"--store=file://{workdir / 'store'}",
        "--resync-seconds=5",
        "--trainer-metrics-port=0",
        f"--namespace={NS_PREFIX}-*",
    ]
    op = OperatorProcess(args, cluster.env(), workdir)
    op.start()
    try:
        yield op
    finally:
        op.stop()


class Queued:
    """PretrainJobs, their batch Jobs, pods and Kueue Workloads in one namespace."""

    def __init__(self, cluster: Any, ns: str) -> None:
        self.ns = ns
        self.custom: Any = client.CustomObjectsApi(cluster.client)
        self.core: Any = client.CoreV1Api(cluster.client)
        self.batch: Any = client.BatchV1Api(cluster.client)

    def create(
        self, name: str, *, nodes: int, outcome: str | None = "hang", queue: str = "gpu", priority: str | None = None
    ) -> None:
        body = pretrain_manifest(name, nodes=nodes, gpus=8, outcome=outcome)
        body["metadata"]["labels"][QUEUE_LABEL] = queue
        if priority is not None:
            body["metadata"]["labels"][PRIORITY_LABEL] = priority
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)).get("status") or {}

    def running_condition(self, name: str) -> dict[str, Any]:
        return self.condition(name, "Running")

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        conditions = self.status(name).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), {})

    def waiting_for_admission(self, name: str, says: str) -> dict[str, Any] | None:
        """The Running condition once it is WaitingForAdmission quoting Kueue's `says`."""
        running = self.running_condition(name)
        ok = running.get("reason") == "WaitingForAdmission" and says in running.get("message", "")
        return running if ok else None

    def events(self, name: str) -> list[Any]:
        return list(self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items)

    def batch_job(self, name: str) -> Any:
        jobs = self.batch.list_namespaced_job(self.ns, label_selector=f"forgeline.io/job={name}").items
        return next((j for j in jobs if not j.metadata.deletion_timestamp), None)

    def pods(self, name: str) -> list[Any]:
        pods = self.core.list_namespaced_pod(self.ns, label_selector=f"forgeline.io/job={name}").items
        return [p for p in pods if not p.metadata.deletion_timestamp]

    def ready_pods(self, name: str) -> int:
        return sum(
            any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []) for p in self.pods(name)
        )

    def workload(self, name: str) -> dict[str, Any] | None:
        """Kueue's Workload for the batch Job of `name` (Kueue names it job-<Job name>-<hash>)."""
        job = self.batch_job(name)
        if job is None:
            return None
        items = self.custom.list_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, self.ns, "workloads")["items"]
        return next(
            (w for w in items if any(o["uid"] == job.metadata.uid for o in w["metadata"].get("ownerReferences", []))),
            None,
        )

    def workload_condition(self, name: str, type_: str) -> dict[str, Any]:
        conditions = ((self.workload(name) or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), {})

    def finish(self, name: str) -> None:
        """Let kwok complete the pods (they hang until their outcome label changes)."""
        for pod in self.pods(name):
            self.core.patch_namespaced_pod(
                pod.metadata.name, self.ns, {"metadata": {"labels": {OUTCOME_LABEL: "done"}}}
            )


@pytest.fixture
def queued(cluster: Any, forgeline: OperatorProcess) -> Iterator[Queued]:
    core = client.CoreV1Api(cluster.client)
    q = Queued(cluster, new_namespace(core, NS_PREFIX))
    yield q
    q.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, q.ns, PLURAL)
    wait_for(lambda: not core.list_namespaced_pod(q.ns).items, timeout=60, what=f"the pods in {q.ns} to be deleted")
    # The ClusterQueue's quota is shared by every test: it is free again only once Kueue has seen
    # the Workloads go (the garbage collector deletes them after their Jobs), not when pods are gone.
    wait_for(
        lambda: not q.custom.list_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, q.ns, "workloads")["items"],
        timeout=60,
        what=f"the Workloads in {q.ns} to be deleted",
    )
    core.delete_namespace(q.ns)


def test_queued_job_is_held_suspended_without_pods_until_kueue_admits_it(kueue: Any, queued: Queued) -> None:
    # The LocalQueue comes after the job: until then Kueue cannot admit it, whatever the timing.
    queued.create("first", nodes=2)
    waiting = wait_for(
        lambda: (
            queued.workload_condition("first", "QuotaReserved").get("status") == "False"
            and queued.workload_condition("first", "QuotaReserved")
        ),
        timeout=30,
        what="Kueue's Workload for the job, not admitted",
    )
    assert "LocalQueue gpu doesn't exist" in waiting["message"]
    assert queued.batch_job("first").spec.suspend is True
    assert queued.pods("first") == []
    running = wait_for(
        lambda: queued.waiting_for_admission("first", "LocalQueue gpu doesn't exist"),
        timeout=30,
        what="the job's Running condition to say WaitingForAdmission, in Kueue's words",
    )
    assert running["message"].startswith("Job first-pretrain-a1 is queued in gpu: ")

    kueue.local_queue(queued.ns)
    wait_for(lambda: queued.status("first").get("state") == "Running", timeout=30, what="the job to run")
    assert queued.workload_condition("first", "Admitted")["status"] == "True"
    assert queued.batch_job("first").spec.suspend is False
    assert len(queued.pods("first")) == 2


def test_job_over_the_gpu_quota_waits_without_pods_and_starts_when_the_first_finishes(
    kueue: Any, queued: Queued
) -> None:
    kueue.local_queue(queued.ns)
    queued.create("first", nodes=2)  # 16 GPUs: the whole quota
    wait_for(lambda: queued.status("first").get("state") == "Running", timeout=30, what="the first job to run")

    queued.create("second", nodes=1)
    pending = wait_for(
        lambda: (
            queued.workload_condition("second", "QuotaReserved").get("status") == "False"
            and queued.workload_condition("second", "QuotaReserved")
        ),
        timeout=30,
        what="Kueue to find no quota for the second job",
    )
    assert "insufficient unused quota for nvidia.com/gpu" in pending["message"]
    assert queued.batch_job("second").spec.suspend is True
    assert queued.pods("second") == []
    wait_for(
        lambda: queued.waiting_for_admission("second", pending["message"]),
        timeout=30,
        what="the second job's Running condition to quote Kueue's reason",
    )

    queued.finish("first")
    wait_for(lambda: queued.status("first").get("state") == "Succeeded", timeout=30, what="the first job to succeed")
    wait_for(lambda: queued.status("second").get("state") == "Running", timeout=30, what="the second job to run")
    assert queued.workload_condition("second", "Admitted")["status"] == "True"


def test_admitted_job_whose_pods_never_become_ready_is_evicted_whole_by_wait_for_pods_ready(
    kueue: Any, queued: Queued
) -> None:
    kueue.local_queue(queued.ns)
    queued.create("stuck", nodes=2, outcome="pending")  # bound by the scheduler, never started
    wait_for(lambda: len(queued.pods("stuck")) == 2, timeout=30, what="the admitted job's two pods")
    assert queued.ready_pods("stuck") == 0

    timeout = kueue.options.pods_ready_timeout
    evicted = wait_for(
        lambda: (
            queued.workload_condition("stuck", "Evicted").get("status") == "True"
            and queued.workload_condition("stuck", "Evicted")
        ),
        timeout=30,
        what=f"Kueue to evict the job after waitForPodsReady's {timeout}",
    )
    assert evicted["reason"] == "PodsReadyTimeout"
    # Nothing is left holding a node: the Job is suspended again and every pod is gone.
    wait_for(lambda: queued.pods("stuck") == [], timeout=30, what="the evicted job's pods to be deleted")
    assert queued.batch_job("stuck").spec.suspend is True
    # A gang that never got ready is no restart: it stays on its attempt, for Kueue to requeue the
    # same Workload with its back-off (a fresh Job would reset it), and says why it waits.
    running = wait_for(
        lambda: queued.waiting_for_admission("stuck", "evicted by Kueue (PodsReadyTimeout)"),
        timeout=30,
        what="the job to wait for admission again, saying why",
    )
    assert evicted["message"] in running["message"]
    status = queued.status("stuck")
    assert (status["attempt"], status.get("restarts", 0), status.get("evictions", 0)) == (1, 0, 0)


def test_running_gang_preempted_by_a_higher_priority_job_restarts_as_an_eviction_and_runs_again(
    kueue: Any, queued: Queued
) -> None:
    kueue.local_queue(queued.ns)
    queued.create("low", nodes=2, priority="low")  # 16 GPUs: the whole quota
    wait_for(lambda: queued.status("low").get("state") == "Running", timeout=30, what="the low-priority job to run")
    first_job = queued.batch_job("low").metadata.name

    queued.create("high", nodes=1, priority="high")  # 8 GPUs: only by preempting the low one
    wait_for(lambda: queued.status("high").get("state") == "Running", timeout=30, what="the high-priority job to run")
    low = wait_for(
        lambda: (s := queued.status("low")).get("attempt") == 2 and s,
        timeout=30,
        what="the preempted job's second attempt",
    )
    assert (low.get("restarts", 0), low.get("evictions", 0)) == (0, 1), low
    restarting = queued.condition("low", "Restarting")
    assert restarting["reason"] == "Preempted", restarting
    assert (
        f"attempt 1: Job {first_job} was preempted by Kueue: Preempted to accommodate a workload"
        in (restarting["message"])
    )
    assert any(e.reason == "Preempted" and e.type == "Warning" for e in queued.events("low"))
    second = queued.batch_job("low")
    assert second.metadata.name == "low-pretrain-a2" and second.spec.suspend is True
    assert second.metadata.labels[QUEUE_LABEL] == "gpu" and second.metadata.labels[PRIORITY_LABEL] == "low"
    # The new attempt waits in the queue, saying why in Kueue's words (the high one holds 8 GPUs).
    wait_for(
        lambda: queued.waiting_for_admission("low", "insufficient unused quota for nvidia.com/gpu"),
        timeout=30,
        what="the new attempt to wait for admission, quoting Kueue",
    )
    assert queued.status("low")["state"] == "Restarting" and queued.pods("low") == []

    queued.finish("high")
    wait_for(lambda: queued.status("high").get("state") == "Succeeded", timeout=30, what="the high job to succeed")
    low = wait_for(
        lambda: (s := queued.status("low")).get("state") == "Running" and s,
        timeout=30,
        what="the preempted job to run its new attempt",
    )
    assert (low["attempt"], low.get("restarts", 0), low.get("evictions", 0)) == (2, 0, 1)
    assert queued.workload_condition("low", "Admitted")["status"] == "True"
    assert queued.condition("low", "Restarting")["reason"] == "Recovered"
