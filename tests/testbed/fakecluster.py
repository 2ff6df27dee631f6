"""An in-memory ClusterPort for unit tests of the Reconciler and the Controller: plain dicts.

`FakeCluster` stores objects as the API server would (namespace, resourceVersion and
creationTimestamp filled in, status writes guarded by resourceVersion and checked against the
CRD's status schema) and plays the Job controller and the kubelet on request (`make_pods`,
`fail_pod`, `complete`). `Harness` drives one Reconciler over it with a clock the test moves.
The same scenarios run on a real control plane in tests/operator/.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

from forgeline.api.kinds import JobStatus
from forgeline.operator.reconcile import Reconciler
from forgeline.operator.render import RenderSettings
from testbed.builders import CREATED, JOB_NAME_LABEL, T0, Obj, completed, pod_of


class FakeCluster:
    """The ClusterPort over a dict; deleting a Job deletes its pods (as the garbage collector would)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.events: list[tuple[str, str, str]] = []
        self.status_writes = 0
        self.applied: list[str] = []
        self.version = 0

    def put(self, obj: Obj) -> Obj:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("namespace", "default")
        obj["metadata"]["resourceVersion"] = str(self.version)
        obj["metadata"].setdefault("creationTimestamp", CREATED)
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return obj

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def apply(self, obj: Obj) -> None:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key not in self.objects:
            self.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
        self.put(obj)

    def create(self, obj: Obj) -> str | None:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            raise Taken(f"{obj['kind']} {key[2]} exists")
        self.apply(obj)
        return str(self.version)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.objects.pop((kind, namespace, name), None)
        if kind == "Job":
            owned = [k for k, o in self.objects.items() if k[0] == "Pod" and _labels(o).get(JOB_NAME_LABEL) == name]
            for key in owned:
                del self.objects[key]

    def list_children(
        self, kind: str, namespace: str, selector: dict[str, str], since: str | None = None
    ) -> tuple[list[Obj], str | None]:
        """Always the latest state (as if every read were a quorum read)."""
        found = [
            copy.deepcopy(o)
            for (k, ns, _), o in self.objects.items()
            if k == kind and ns == namespace and all(_labels(o).get(a) == b for a, b in selector.items())
        ]
        return found, str(self.version)

    def patch_status(self, kind: str, namespace: str, name: str, status: Obj, resource_version: str) -> str | None:
        obj = self.objects[(kind, namespace, name)]
        assert obj["metadata"]["resourceVersion"] == resource_version, "conflict"
        JobStatus.model_validate(status)  # what we write fits the CRD's status schema
        obj["status"] = copy.deepcopy(status)
        self.status_writes += 1
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return str(self.version)

    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def scrape(self, url: str) -> str | None:
        return None

    # -- playing the Job controller and the kubelet ---------------------------------------
    def job_of(self, attempt: int, name: str = "base-pretrain") -> Obj | None:
        return self.objects.get(("Job", "default", f"{name}-a{attempt}"))

    def make_pods(self, attempt: int, phase: str = "Running", name: str = "base-pretrain") -> None:
        job = self.job_of(attempt, name)
        assert job is not None, f"no Job for attempt {attempt}"
        for i in range(job["spec"]["completions"]):
            self.set_pod(attempt, i, phase, name=name)

    def set_pod(self, attempt: int, index: int, phase: str, *, name: str = "base-pretrain", **pod: Any) -> None:
        """Pod `index` of the attempt's Job in `phase`; `pod` as for testbed.builders.pod."""
        job = self.job_of(attempt, name)
        assert job is not None, f"no Job for attempt {attempt}"
        self.put(pod_of(job, index, phase, **pod))

    def fail_pod(
        self, attempt: int, index: int, code: int, *, reason: str = "Error", disrupted: bool = False, message: str = ""
    ) -> None:
        self.set_pod(attempt, index, "Failed", exit_code=code, reason=reason, disrupted=disrupted, message=message)

    def complete(self, attempt: int, message: str = "") -> None:
        """Every pod exits 0 (rank 0 leaves `message` as its result) and the Job is Complete."""
        job = self.job_of(attempt)
        assert job is not None
        for i in range(job["spec"]["completions"]):
            self.set_pod(attempt, i, "Succeeded", exit_code=0, message=message if i == 0 else "")
        job["status"] = completed(job)["status"]


class Taken(Exception):
    """A create of a name that exists: the API server's 409 AlreadyExists."""

    status = 409


def _labels(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


class Harness:
    """One Reconciler over a FakeCluster holding `bodies`, with a clock the test moves (`tick`)."""

    def __init__(self, *bodies: Obj) -> None:
        self.cluster = FakeCluster()
        self.now = T0
        for body in bodies:
            self.cluster.put(body)
        self.reconciler = Reconciler(self.cluster, RenderSettings(store="s3://store"), clock=lambda: self.now)

    def run(self, name: str = "base", kind: str = "PretrainJob") -> float | None:
        return self.reconciler.reconcile(kind, "default", name)

    def status(self, name: str = "base", kind: str = "PretrainJob") -> Obj:
        obj = self.cluster.get(kind, "default", name)
        assert obj is not None
        return obj.get("status") or {}

    def condition(self, type_: str, name: str = "base", kind: str = "PretrainJob") -> Obj:
        return next(c for c in self.status(name, kind)["conditions"] if c["type"] == type_)

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def reasons(self) -> list[str]:
        return [r for _, r, _ in self.cluster.events]
