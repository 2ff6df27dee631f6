"""What the operator asks of the API server: every request counted by verb and resource, the
independent requests of a pass sent together (the Job still last), no pass for the echo of the
operator's own status write, and the work queue's depth."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from testbed.builders import from_job, lora, pretrain
from testbed.fakecluster import FakeCluster

from forgeline.operator.client import KubeClient, request_kind
from forgeline.operator.controller import Controller
from forgeline.operator.metrics import OperatorMetrics
from forgeline.operator.reconcile import Reconciler
from forgeline.operator.render import RenderSettings
from forgeline.operator.workqueue import WorkQueue


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/apis/forgeline.io/v1alpha1/namespaces/ns/pretrainjobs/base", None, ("GET", "pretrainjobs")),
        ("GET", "/apis/batch/v1/namespaces/ns/jobs", {"labelSelector": "a=b"}, ("LIST", "jobs")),
        ("GET", "/api/v1/namespaces/ns/pods", {"watch": "true"}, ("WATCH", "pods")),
        ("GET", "/apis/forgeline.io/v1alpha1/pretrainjobs", None, ("LIST", "pretrainjobs")),
        ("PATCH", "/apis/forgeline.io/v1alpha1/namespaces/ns/lorajobs/x/status", None, ("PATCH", "lorajobs")),
        ("PATCH", "/apis/scheduling.k8s.io/v1alpha2/namespaces/ns/podgroups/x", None, ("PATCH", "podgroups")),
        ("POST", "/api/v1/namespaces/ns/events", None, ("POST", "events")),
        ("DELETE", "/api/v1/namespaces/ns/configmaps/x", None, ("DELETE", "configmaps")),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/op", None, ("PUT", "leases")),
        ("GET", "/api/v1/namespaces/ns", None, ("GET", "namespaces")),
        ("GET", "/api/v1/namespaces", None, ("LIST", "namespaces")),
        ("GET", "/apis/scheduling.k8s.io/v1alpha2", None, ("GET", "discovery")),
    ],
)
def test_each_request_is_named_by_verb_and_plural_never_by_object(
    method: str, path: str, query: dict[str, str] | None, expected: tuple[str, str]
) -> None:
    assert request_kind(method, path, query) == expected


class _Response:
    def __init__(self, status: int, data: bytes) -> None:
        self.status, self._data = status, data

    def read(self) -> bytes:
        return self._data


class _ApiClient:
    """The two methods of kubernetes.client.ApiClient that KubeClient.request calls."""

    def __init__(self, answer: _Response) -> None:
        self.answer = answer

    def param_serialize(self, method: str, path: str, **_: Any) -> tuple[Any, ...]:
        return method, "https://api" + path, {}, None, None

    def call_api(self, method: str, url: str, **_: Any) -> _Response:
        return self.answer


def test_the_client_counts_every_request_and_returns_the_version_a_status_write_made() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    api = _ApiClient(_Response(200, b'{"metadata": {"resourceVersion": "42"}}'))
    kube = KubeClient(api, on_request=metrics.api_request)
    assert kube.patch_status("PretrainJob", "ns", "base", {"state": "Running"}, "41") == "42"
    kube.list_children("Pod", "ns", {"forgeline.io/job": "base"})
    kube.list_children("Pod", "ns", {"forgeline.io/job": "base"})
    api.answer = _Response(404, b"{}")
    assert kube.get("PretrainJob", "ns", "gone") is None  # answered 404: still a request sent

    def count(verb: str, resource: str) -> float | None:
        labels = {"verb": verb, "resource": resource}
        return registry.get_sample_value("forgeline_operator_api_requests_total", labels)

    assert (count("PATCH", "pretrainjobs"), count("LIST", "pods"), count("GET", "pretrainjobs")) == (1, 2, 1)


class _SlowPort(FakeCluster):
    """FakeCluster whose applies take a moment and record when each ran; one kind can fail."""

    def __init__(self, fail_kind: str | None = None) -> None:
        super().__init__()
        self.fail_kind = fail_kind
        self.spans: dict[str, tuple[float, float]] = {}
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def apply(self, obj: dict[str, Any]) -> None:
        started = time.monotonic()
        time.sleep(0.05)
        with self._lock:
            self.threads.add(threading.current_thread().name)
            self.spans[obj["kind"]] = (started, time.monotonic())
            if obj["kind"] == self.fail_kind:
                raise RuntimeError(f"{obj['kind']} refused")
            super().apply(obj)


def test_a_new_attempts_config_service_and_pod_group_go_together_and_the_job_after_them() -> None:
    port = _SlowPort()
    port.put(pretrain(nodes=3))
    reconciler = Reconciler(port, RenderSettings(store="s3://store", gang_scheduling=True), concurrent_requests=4)
    reconciler.reconcile("PretrainJob", "default", "base")
    before = {k: v for k, v in port.spans.items() if k != "Job"}
    assert set(before) == {"ConfigMap", "Service", "PodGroup"}
    assert len(port.threads) >= 2, "the three went out together"
    assert port.spans["Job"][0] >= max(end for _, end in before.values()), "the Job only once the rest exist"
    assert (port.get("PretrainJob", "default", "base") or {})["status"]["attempt"] == 1


def test_a_failed_prerequisite_leaves_no_job_and_the_next_pass_applies_the_same_names() -> None:
    port = _SlowPort(fail_kind="Service")
    port.put(pretrain(nodes=2))
    reconciler = Reconciler(port, RenderSettings(store="s3://store"), concurrent_requests=4)
    with pytest.raises(RuntimeError, match="Service refused"):
        reconciler.reconcile("PretrainJob", "default", "base")
    assert not [k for k in port.objects if k[0] == "Job"], "no Job without its Service"
    # The intent was written first: the next pass finishes attempt 1, under the same names.
    assert (port.get("PretrainJob", "default", "base") or {})["status"]["attempt"] == 1
    port.fail_kind = None
    reconciler.reconcile("PretrainJob", "default", "base")
    assert sorted(k for k in port.objects if k[0] != "PretrainJob") == [
        ("ConfigMap", "default", "base-pretrain-a1"),
        ("Job", "default", "base-pretrain-a1"),
        ("Service", "default", "base-pretrain-a1"),
    ]


class _VersionedPort(FakeCluster):
    """FakeCluster that returns the resourceVersion a status write made, as KubeClient does."""

    def patch_status(self, kind: str, namespace: str, name: str, status: Any, resource_version: str) -> str | None:
        super().patch_status(kind, namespace, name, status, resource_version)
        return str(self.version)


def test_the_echo_of_our_own_status_write_queues_no_pass_and_anyone_elses_change_does() -> None:
    port = _VersionedPort()
    controller = Controller(port, RenderSettings(store="s3://store"), resync_seconds=3600)
    key = ("PretrainJob", "default", "base")
    controller.job_changed(port.put(pretrain()))
    assert controller.queue.depth() == 1
    controller.reconciler.reconcile(*key)  # a worker's pass: writes status (attempt 1)
    controller.queue = WorkQueue(controller._work)  # an empty queue, to see what the events add
    echo = port.get(*key)
    assert echo is not None and echo["metadata"]["resourceVersion"] == controller.reconciler.written[key]
    controller.job_changed(echo)
    assert controller.queue.depth() == 0, "our own write: nothing new to look at"
    echo["metadata"]["labels"] = {"team": "a"}
    controller.job_changed(port.put(echo))  # someone else's write: a new resourceVersion
    assert controller.queue.depth() == 1
    controller.job_changed(echo, deleted=True)
    assert key not in controller.reconciler.written


def test_the_queue_depth_counts_what_is_due_not_what_waits_for_later() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    queue: WorkQueue[str] = WorkQueue(lambda key: None)
    metrics.watch_queue(queue.depth)
    queue.add("now")
    queue.add("soon", 0.0)
    queue.add("later", 3600)
    assert queue.depth() == 2 and len(queue) == 3
    assert registry.get_sample_value("forgeline_operator_queue_depth") == 2


def test_the_chain_index_keeps_no_entry_for_names_that_are_gone() -> None:
    controller = Controller(FakeCluster(), RenderSettings(store="s3://store"))
    for i in range(50):
        body = lora(f"tuned-{i}", from_job("PretrainJob", f"base-{i}"))
        controller.job_changed(body)
        controller.job_changed(body, deleted=True)
    assert not controller._dependents and not controller._upstreams and not controller._seen


def test_kopf_keeps_no_copy_of_each_object_for_change_handlers_we_do_not_have() -> None:
    import kopf

    from forgeline.operator.handlers import _NoDiffBase

    body = kopf.Body({"metadata": {"name": "p", "annotations": {"a": "b"}}, "spec": {"x": list(range(1000))}})
    storage = _NoDiffBase()
    patch = kopf.Patch()
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert not patch, "nothing written to the object"


def test_pods_of_a_job_that_is_gone_belong_to_no_attempt() -> None:
    from forgeline.operator.policies.pods import CONTROLLER_UID
    from forgeline.operator.reconcile import of_listed_jobs

    def pod(name: str, job_uid: str | None) -> dict[str, Any]:
        labels = {"forgeline.io/attempt": "1", **({CONTROLLER_UID: job_uid} if job_uid else {})}
        return {"metadata": {"name": name, "labels": labels}}

    listed = [{"metadata": {"name": "base-pretrain-a1", "uid": "new"}}]
    pods = [pod("of-the-new-job", "new"), pod("of-a-deleted-namesake", "old"), pod("unlabelled", None)]
    kept = [p["metadata"]["name"] for p in of_listed_jobs(pods, listed)]
    assert kept == ["of-the-new-job", "unlabelled"]
    assert of_listed_jobs(pods[:2], []) == [], "no Job listed: none of its pods is judged"
