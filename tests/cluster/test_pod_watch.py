"""The operator's pod watch (client.watch_metadata) on the real control plane: the listing, then
each change, delivered as metadata only (PartialObjectMetadata), for pods with our label only,
and a watch that stops when told."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client
from testbed.kube import new_namespace, wait_for

from forgeline.operator.client import KubeClient
from forgeline.operator.render import LABEL_JOB

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A pod no node will run (no toleration for the kwok taints): it stays Pending."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeSelector": {"no": "such-node"}, "containers": [{"name": "c", "image": "trainer:test"}]},
    }


def test_the_pod_watch_lists_then_follows_our_pods_metadata_only_and_stops(cluster: Any) -> None:
    core = client.CoreV1Api(cluster.client)
    ns = new_namespace(core, "podwatch")
    core.create_namespaced_pod(ns, pod("before", {LABEL_JOB: "a"}))
    seen: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def record(obj: dict[str, Any]) -> None:
        with lock:
            seen.append((obj["metadata"]["name"], obj))

    def names() -> list[str]:
        with lock:
            return [name for name, _ in seen]

    stopped = threading.Event()
    kube = KubeClient(cluster.api_client())
    watch = threading.Thread(target=kube.watch_metadata, args=("Pod", ns, LABEL_JOB, record, stopped), daemon=True)
    watch.start()
    wait_for(lambda: "before" in names(), timeout=30, what="the listing")
    core.create_namespaced_pod(ns, pod("after", {LABEL_JOB: "b"}))
    core.create_namespaced_pod(ns, pod("not-ours", {"app": "x"}))
    wait_for(lambda: "after" in names(), timeout=30, what="an added pod")
    core.patch_namespaced_pod("after", ns, {"metadata": {"labels": {"changed": "yes"}}})
    wait_for(
        lambda: any(o["metadata"].get("labels", {}).get("changed") == "yes" for _, o in list(seen)),
        timeout=30,
        what="a changed pod",
    )
    before = names().count("before")
    core.delete_namespaced_pod("before", ns, grace_period_seconds=0)
    wait_for(lambda: names().count("before") > before, timeout=30, what="the deletion")
    assert "not-ours" not in names(), "the label selector is the server's"
    with lock:
        kinds = {o.get("kind") for _, o in seen}
        assert kinds == {"PartialObjectMetadata"} and not any("spec" in o or "status" in o for _, o in seen)
    stopped.set()
    core.patch_namespaced_pod("after", ns, {"metadata": {"labels": {"wake": "up"}}})  # its next event
    watch.join(30)
    assert not watch.is_alive(), "stopped"
