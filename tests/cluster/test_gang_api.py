"""The in-tree gang scheduling of KEP-4671 on the test control plane (GenericWorkload and
GangScheduling gates, scheduling.k8s.io/v1alpha2): a PodGroup with a gang policy holds its pods
until all of them fit at once. The shape of the objects is written down in tests/cluster/README.md
("Gang scheduling")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from testbed.kube import ON_GPU_NODE, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]

GROUP, VERSION = "scheduling.k8s.io", "v1alpha2"
GPUS_PER_NODE = 8


@pytest.fixture(autouse=True)
def _gang_api_served(cluster: Any) -> None:
    assert cluster.gang_scheduling, f"{cluster.bin_dir} predates the Workload/PodGroup API (needs 1.36+)"


@pytest.fixture
def custom(cluster: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.client)


def gpu_pod(name: str, pod_group: str | None = None) -> dict[str, Any]:
    """A bare pod asking for a whole 8-GPU kwok node (it stays Running there)."""
    spec: dict[str, Any] = {
        **ON_GPU_NODE,
        "restartPolicy": "Never",
        "containers": [
            {"name": "main", "image": "trainer:test", "resources": {"limits": {"nvidia.com/gpu": str(GPUS_PER_NODE)}}}
        ],
    }
    if pod_group is not None:
        spec["schedulingGroup"] = {"podGroupName": pod_group}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def workload(name: str, min_count: int) -> dict[str, Any]:
    """A Workload: the gang policy as a template the PodGroups of one run are made from."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": {"podGroupTemplates": [{"name": "workers", "schedulingPolicy": {"gang": {"minCount": min_count}}}]},
    }


def pod_group(name: str, min_count: int, workload_name: str) -> dict[str, Any]:
    """The PodGroup the pods name in spec.schedulingGroup.podGroupName; the scheduler reads its
    own spec.schedulingPolicy (the template reference records where it came from)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PodGroup",
        "metadata": {"name": name},
        "spec": {
            "podGroupTemplateRef": {"workload": {"workloadName": workload_name, "podGroupTemplateName": "workers"}},
            "schedulingPolicy": {"gang": {"minCount": min_count}},
        },
    }


def bound(core: Any, ns: str, names: list[str]) -> list[str]:
    return [n for n in names if core.read_namespaced_pod(n, ns).spec.node_name]


def unschedulable(core: Any, ns: str, name: str) -> bool:
    conditions = core.read_namespaced_pod(name, ns).status.conditions or []
    return any(c.type == "PodScheduled" and c.status == "False" for c in conditions)


@pytest.fixture
def two_nodes_taken(cluster: Any, core: Any, ns: str) -> Iterator[list[str]]:
    """Pods holding all but two of the kwok GPU nodes; yields their names."""
    gpu_nodes = len(core.list_node(label_selector="nvidia.com/gpu.present=true").items)
    names = [f"blocker-{i}" for i in range(gpu_nodes - 2)]
    for name in names:
        core.create_namespaced_pod(ns, gpu_pod(name))
    wait_for(lambda: len(bound(core, ns, names)) == len(names), timeout=30, what="the blockers to be bound")
    yield names
    # Free the nodes before the next test (the namespace itself goes in the background).
    core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(ns).items, timeout=30, what=f"the pods in {ns} to be deleted")


def test_gang_of_three_is_not_bound_on_two_free_nodes_and_is_bound_whole_when_a_third_frees(
    core: Any, custom: client.CustomObjectsApi, ns: str, two_nodes_taken: list[str]
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "workloads", workload("train", 3))
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "podgroups", pod_group("train-a1", 3, "train"))
    gang = [f"train-{i}" for i in range(3)]
    for name in gang:
        core.create_namespaced_pod(ns, gpu_pod(name, pod_group="train-a1"))

    # The scheduler has tried the whole gang and refused it: every pod says so, none is bound.
    wait_for(
        lambda: all(unschedulable(core, ns, n) for n in gang), timeout=30, what="the gang's pods to be unschedulable"
    )
    assert bound(core, ns, gang) == []

    core.delete_namespaced_pod(two_nodes_taken[0], ns, grace_period_seconds=0)
    wait_for(lambda: len(bound(core, ns, gang)) == 3, timeout=30, what="all three pods of the gang to be bound")
    nodes = {core.read_namespaced_pod(n, ns).spec.node_name for n in gang}
    assert len(nodes) == 3


def test_without_a_pod_group_two_of_three_pods_are_bound_on_two_free_nodes(
    core: Any, ns: str, two_nodes_taken: list[str]
) -> None:
    # The contrast that makes the gang test mean something: the default, pod-by-pod placement.
    pods = [f"loose-{i}" for i in range(3)]
    for name in pods:
        core.create_namespaced_pod(ns, gpu_pod(name))
    wait_for(lambda: len(bound(core, ns, pods)) == 2, timeout=30, what="two of the three pods to be bound")
    wait_for(
        lambda: unschedulable(core, ns, next(n for n in pods if n not in bound(core, ns, pods))),
        timeout=30,
        what="the third pod to be unschedulable",
    )
    assert len(bound(core, ns, pods)) == 2


def test_workload_and_pod_group_kinds_are_served(cluster: Any) -> None:
    out = cluster.kubectl("api-resources", f"--api-group={GROUP}", "-o", "wide").stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "Workload" in rows["workloads"] and f"{GROUP}/{VERSION}" in rows["workloads"]
    assert "PodGroup" in rows["podgroups"] and f"{GROUP}/{VERSION}" in rows["podgroups"]
