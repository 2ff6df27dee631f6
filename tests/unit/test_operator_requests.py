"""What the operator asks of the API server: every request counted by verb and resource, the
independent requests of a pass sent together (the Job still last), no pass for the echo of the
operator's own status write, and the work queue's depth."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from testbed.builders import from_job, lora, pretrain
from testbed.fakecluster import FakeCluster

from forgeline.operator.client import WATCH_RETRY_MAX, KubeClient, request_kind
from forgeline.operator.controller import Controller
from forgeline.operator.metrics import OperatorMetrics
from forgeline.operator.reconcile import Reconciler
from forgeline.operator.render import RenderSettings, children_selector
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


class _Conflict(Exception):
    status = 409


def test_a_status_write_that_conflicts_leaves_no_job_and_counts_nothing_twice() -> None:
    """The new attempt's ConfigMap, Service and PodGroup go out with the status write; the Job
    waits for it. A conflict leaves those three (the next pass applies the same names) and no Job."""
    port = _SlowPort()
    port.put(pretrain(nodes=2))
    reconciler = Reconciler(port, RenderSettings(store="s3://store", gang_scheduling=True), concurrent_requests=4)
    write = port.patch_status

    def conflict(*args: Any) -> str | None:
        raise _Conflict("the object has been modified")

    port.patch_status = conflict  # type: ignore[method-assign]
    with pytest.raises(_Conflict):
        reconciler.reconcile("PretrainJob", "default", "base")
    assert set(port.spans) == {"ConfigMap", "Service", "PodGroup"}, "no Job before its attempt is recorded"
    port.patch_status = write  # type: ignore[method-assign]
    reconciler.reconcile("PretrainJob", "default", "base")
    assert (port.get("PretrainJob", "default", "base") or {})["status"]["attempt"] == 1
    assert port.job_of(1) is not None and port.job_of(2) is None


class _ReadsPort(FakeCluster):
    """FakeCluster that records the version each listing asked for, by kind."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, str | None]] = []

    def list_children(self, kind: str, namespace: str, selector: dict[str, str], since: str | None = None) -> Any:
        self.reads.append((kind, since))
        return super().list_children(kind, namespace, selector, since)


def test_listings_read_the_watch_cache_never_older_than_what_the_pass_saw_or_made() -> None:
    port = _ReadsPort()
    port.put(pretrain(nodes=2))
    reconciler = Reconciler(port, RenderSettings(store="s3://store"))
    reconciler.reconcile("PretrainJob", "default", "base")
    created = port.version  # the Job was the pass's last write
    port.make_pods(1)
    listed = port.version  # what the next pass's listings see (the fake answers the latest)
    reconciler.reconcile("PretrainJob", "default", "base")
    reconciler.reconcile("PretrainJob", "default", "base")
    assert port.reads == [
        ("Job", "0"),  # a new job: any version (a Job missed is a 409 on create)
        ("Job", str(created)),  # at least as new as the Job this process created
        ("Pod", None),  # nothing seen of its pods yet: the latest state
        ("Job", str(listed)),  # never older than the last listing
        ("Pod", str(listed)),
    ]
    # Another process (a restart, a new leader) has seen nothing: pods at the latest state, as
    # the status it reads may say the gang was Running.
    port.reads.clear()
    Reconciler(port, RenderSettings(store="s3://store")).reconcile("PretrainJob", "default", "base")
    assert port.reads == [("Job", "0"), ("Pod", None)]


def test_a_job_name_taken_is_never_adopted_and_the_next_pass_reads_the_latest_state() -> None:
    """A Job create that finds its name taken (a listing that missed a namesake's leftover) is a
    409: the pass ends, and the next one lists at the latest state (no resourceVersion)."""
    port = FakeCluster()
    port.put(pretrain(nodes=2))
    labels = {**children_selector("PretrainJob", "base"), "forgeline.io/attempt": "1"}
    owner = [{"apiVersion": "forgeline.io/v1alpha1", "kind": "PretrainJob", "name": "base", "uid": "uid-deleted"}]
    meta = {"name": "base-pretrain-a1", "uid": "old", "labels": labels, "ownerReferences": owner}
    leftover = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta}
    reconciler = Reconciler(port, RenderSettings(store="s3://store"))
    reads: list[str | None] = []
    listing = port.list_children

    def list_children(kind: str, namespace: str, selector: dict[str, str], since: str | None = None) -> Any:
        if kind == "Job":
            reads.append(since)
            if since == "0":  # a stale cache: the leftover is not in it yet
                return [], "1"
        return listing(kind, namespace, selector, since)

    port.list_children = list_children  # type: ignore[method-assign]
    port.put(leftover)
    with pytest.raises(Exception, match="exists") as raised:
        reconciler.reconcile("PretrainJob", "default", "base")
    assert getattr(raised.value, "status", None) == 409
    assert (port.job_of(1) or {})["metadata"]["uid"] == "old", "not adopted, not overwritten"
    assert reconciler.reconcile("PretrainJob", "default", "base") == 1.0, "back once the leftover is gone"
    assert reads == ["0", None], "a new job reads any version; after the 409, the latest"
    assert port.job_of(1) is None, "the namesake's leftover, deleted"
    reconciler.reconcile("PretrainJob", "default", "base")
    job = port.job_of(1)
    assert job is not None and job["metadata"]["ownerReferences"][0]["uid"] == "uid-base"
    assert (port.get("PretrainJob", "default", "base") or {})["status"]["attempt"] == 1


def test_the_echo_of_our_own_status_write_queues_no_pass_and_anyone_elses_change_does() -> None:
    port = FakeCluster()
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


class _EventFirstPort(FakeCluster):
    """FakeCluster whose status writes reach the controller's watch before their answer (as
    they often do), optionally followed by someone else's change while the pass still runs."""

    def __init__(self) -> None:
        super().__init__()
        self.controller: Controller | None = None
        self.someone_else = False

    def patch_status(self, kind: str, namespace: str, name: str, status: Any, resource_version: str) -> str | None:
        written = super().patch_status(kind, namespace, name, status, resource_version)
        assert self.controller is not None
        self.controller.job_changed(self.get(kind, namespace, name) or {})
        if self.someone_else:
            body = self.get(kind, namespace, name) or {}
            body["metadata"]["labels"] = {"team": "b"}
            self.controller.job_changed(self.put(body))
        return written


@pytest.mark.parametrize(("someone_else", "passes_queued"), [(False, 0), (True, 1)])
def test_an_event_during_its_jobs_pass_is_judged_when_the_pass_ends(someone_else: bool, passes_queued: int) -> None:
    port = _EventFirstPort()
    controller = port.controller = Controller(port, RenderSettings(store="s3://store"), resync_seconds=3600)
    key = ("PretrainJob", "default", "base")
    port.put(pretrain())
    port.someone_else = someone_else
    controller._work(key)  # a worker's pass (the queue is not started): writes status, attempt 1
    assert port.status_writes == 1
    assert controller.queue.depth() == passes_queued


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


@pytest.mark.parametrize(
    ("namespaces", "watched"),
    [
        ([], [None]),
        (["team-a", "team-b"], ["team-a", "team-b"]),
        (["op-*"], [None]),
        (["team-a", "!kube-system"], [None]),
        (["a,b"], [None]),
    ],
)
def test_children_are_watched_per_namespace_named_and_everywhere_for_a_pattern(
    namespaces: list[str], watched: list[str | None]
) -> None:
    from forgeline.operator.handlers import children_watch_namespaces

    assert children_watch_namespaces(namespaces) == watched


def test_a_pod_change_queues_a_pass_only_for_a_job_this_operator_serves() -> None:
    controller = Controller(FakeCluster(), RenderSettings(store="s3://store"), resync_seconds=3600)
    served = {"forgeline.io/job": "base", "forgeline.io/kind": "PretrainJob"}
    other = {"forgeline.io/job": "theirs", "forgeline.io/kind": "PretrainJob"}
    controller.job_changed(pretrain())
    controller.queue = WorkQueue(controller._work)  # empty, to see what the pod changes add
    for labels, namespace in [(other, "default"), (served, "elsewhere"), ({"forgeline.io/job": "base"}, "default")]:
        controller.child_changed({"metadata": {"namespace": namespace, "labels": labels}})
    assert len(controller.queue) == 0, "another operator's job, another namespace, no kind: none ours"
    controller.child_changed({"kind": "PartialObjectMetadata", "metadata": {"namespace": "default", "labels": served}})
    assert len(controller.queue) == 1


class _Stream:
    """An unread watch answer: urllib3's response, as far as watch_metadata reads it."""

    def __init__(self, lines: list[dict[str, Any]], then: Callable[[], None] = lambda: None) -> None:
        self._data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        self.then = then
        self.released = self.closed = False

    def stream(self, size: int) -> Iterator[bytes]:
        for i in range(0, len(self._data), 7):  # lines split across chunks
            yield self._data[i : i + 7]
        self.then()

    def release_conn(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


class _WatchApi(_ApiClient):
    """Answers each request with the next of `answers` and records (verb, resource, query)."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__(_Response(200, b"{}"))
        self.answers, self.sent = answers, []

    def call_api(self, method: str, url: str, **_: Any) -> Any:
        self.sent.append(url.split("?", 1)[1] if "?" in url else "")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, _Stream):
            response = _Response(200, b"")
            response.response = answer  # type: ignore[attr-defined]
            return response
        return _Response(200, json.dumps(answer).encode())


def test_the_pod_watch_resumes_from_its_last_version_and_lists_again_when_that_expired() -> None:
    stopped = threading.Event()

    def pod(name: str, version: str) -> dict[str, Any]:
        return {"kind": "PartialObjectMetadata", "metadata": {"name": name, "resourceVersion": version}}

    api = _WatchApi(
        [
            {"metadata": {"resourceVersion": "5"}, "items": [pod("listed", "4")]},
            _Stream([{"type": "ADDED", "object": pod("added", "6")}, {"type": "BOOKMARK", "object": pod("", "7")}]),
            _Stream([{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}]),
            {"metadata": {"resourceVersion": "9"}, "items": [pod("relisted", "8")]},
            _Stream([{"type": "DELETED", "object": pod("deleted", "10")}], then=stopped.set),
        ]
    )
    seen: list[str] = []
    KubeClient(api).watch_metadata(
        "Pod", "ns", "forgeline.io/job", lambda o: seen.append(o["metadata"]["name"]), stopped
    )
    assert seen == ["listed", "added", "relisted", "deleted"], "bookmarks carry a version, not a change"
    versions = [dict(p.split("=", 1) for p in q.split("&")).get("resourceVersion") for q in api.sent]
    assert versions == [None, "5", "7", None, "9"], "resumed from the bookmark; listed again after the 410"
    assert all("labelSelector=forgeline.io%2Fjob" in q for q in api.sent)


class _Waits(threading.Event):
    """A stop signal that records each wait instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0))
        return self.is_set()


def test_a_broken_pod_watch_retries_soon_after_the_api_server_is_back() -> None:
    """Backoff doubles but stays within WATCH_RETRY_MAX, and a watch that worked starts over."""
    stopped = _Waits()
    down = [ConnectionRefusedError("API server away") for _ in range(7)]
    listing = {"metadata": {"resourceVersion": "5"}, "items": []}
    api = _WatchApi([*down, listing, _Stream([]), ConnectionRefusedError("again"), _Stream([], then=stopped.set)])
    KubeClient(api).watch_metadata("Pod", None, "forgeline.io/job", lambda _: None, stopped)
    assert stopped.waits == [0.5, 1.0, 2.0, 4.0, WATCH_RETRY_MAX, WATCH_RETRY_MAX, WATCH_RETRY_MAX, 0.5]
