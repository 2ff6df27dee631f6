"""Gangs seen from outside: a recorder of pod and batch-Job watch events, and trainer processes.

The recorder keeps every watch event of the pods and batch Jobs that carry the operator's
`forgeline.io/job` label in one namespace, each with the client-side time it arrived, from one
resourceVersion to the next (a watch that ends resumes where it stopped; one that breaks, as in
an API server restart, lists again: what is listed is recorded as SYNC, what is no longer there
as DELETED). Invariants about the whole run (never two Jobs for one attempt, never two gangs of
one attempt) are checked on that stream, not on a final snapshot that would hide what happened
in between. The bench of recovery times and the fault campaign read it.

`trainer_processes` finds the torchrun worker processes of a pod on the process node (a kill
there is a trainer crash, as an OOM kill or a segfault would be).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

LABEL_JOB = "forgeline.io/job"
LABEL_ATTEMPT = "forgeline.io/attempt"
LABEL_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class Sighting:
    """One watch event: when it arrived (time.monotonic()), what it was, and the object's state."""

    t: float
    kind: str  # "Pod" or "Job"
    type: str  # ADDED, MODIFIED, DELETED (SYNC: listed after a broken watch)
    name: str
    uid: str
    job: str  # the forgeline job it belongs to
    attempt: int
    index: str  # a pod's completion index (its node rank); "" for a Job
    phase: str  # a pod's phase; a Job's "Failed"/"Complete" condition or "Active"
    deleting: bool  # deletionTimestamp set
    obj: dict[str, Any]

    @property
    def gone(self) -> bool:
        return self.type == "DELETED" or self.deleting

    @property
    def live(self) -> bool:
        """A pod that is (or may become) a running member of its gang."""
        return not self.gone and self.phase in ("Pending", "Running")


def _job_phase(obj: dict[str, Any]) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "Complete"):
            return str(cond["type"])
    return "Active"


class WatchRecorder:
    """Record pod and batch-Job watch events of one namespace in arrival order (thread-safe)."""

    def __init__(
        self,
        api_client_factory: Callable[[], Any],
        namespace: str,
        on_sighting: Callable[[Sighting], None] | None = None,
    ) -> None:
        """`on_sighting` runs on the watch thread for each event, as it arrives (a fault hook)."""
        self.namespace = namespace
        self.on_sighting = on_sighting
        self.sightings: list[Sighting] = []
        self.watch_restarts = 0
        self._lock = threading.Lock()
        self._last: dict[str, dict[str, Sighting]] = {"Pod": {}, "Job": {}}
        self._stop = threading.Event()
        self._factory = api_client_factory
        self._threads = [
            threading.Thread(target=self._watch, args=("Pod",), daemon=True, name=f"watch-pods-{namespace}"),
            threading.Thread(target=self._watch, args=("Job",), daemon=True, name=f"watch-jobs-{namespace}"),
        ]

    def start(self) -> WatchRecorder:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> list[Sighting]:
        with self._lock:
            return list(self.sightings)

    def first(self, match: Callable[[Sighting], bool], after: float = 0.0) -> Sighting | None:
        return next((s for s in self.snapshot() if s.t >= after and match(s)), None)

    def _record(self, kind: str, type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        try:
            attempt = int(labels.get(LABEL_ATTEMPT, "0"))
        except ValueError:
            attempt = 0
        phase = str((obj.get("status") or {}).get("phase", "")) if kind == "Pod" else _job_phase(obj)
        sighting = Sighting(
            t=time.monotonic(),
            kind=kind,
            type=type_,
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            job=str(labels.get(LABEL_JOB, "")),
            attempt=attempt,
            index=str((meta.get("annotations") or {}).get(LABEL_INDEX, "")) if kind == "Pod" else "",
            phase=phase,
            deleting=bool(meta.get("deletionTimestamp")),
            obj=obj,
        )
        with self._lock:
            self.sightings.append(sighting)
            self._last[kind][sighting.uid] = sighting
        if self.on_sighting is not None:
            self.on_sighting(sighting)

    def _watch(self, kind: str) -> None:
        from kubernetes import client, watch

        api: Any = client.CoreV1Api(self._factory()) if kind == "Pod" else client.BatchV1Api(self._factory())
        list_fn = api.list_namespaced_pod if kind == "Pod" else api.list_namespaced_job
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listing = api.api_client.sanitize_for_serialization(
                        list_fn(self.namespace, label_selector=LABEL_JOB)
                    )
                    listed = {item["metadata"]["uid"] for item in listing["items"]}
                    for item in listing["items"]:
                        self._record(kind, "SYNC", item)
                    for last in list(self._last[kind].values()):  # deleted while the watch was down
                        if last.uid not in listed and last.type != "DELETED":
                            self._record(kind, "DELETED", last.obj)
                    rv = listing["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    list_fn, self.namespace, label_selector=LABEL_JOB, resource_version=rv, timeout_seconds=30
                )
                for ev in stream:
                    obj = ev["raw_object"]
                    if ev["type"] == "ERROR":
                        rv = None if obj.get("code") == 410 else rv  # too old: list again
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] != "BOOKMARK":
                        self._record(kind, ev["type"], obj)
                    if self._stop.is_set():
                        return
            except Exception:  # the API server went away, or "too old" (410) after its restart: list again
                if self._stop.is_set():
                    return
                self.watch_restarts += 1
                rv = None
                self._stop.wait(0.2)


@dataclass
class Violation:
    t: float
    what: str


def duplicate_gangs(sightings: list[Sighting], nodes: dict[str, int]) -> list[Violation]:
    """Every moment the stream shows an attempt with two batch Jobs, or more live pods than one gang.

    `nodes` is the gang size (pods per attempt) of each forgeline job. A batch Job of an attempt
    that is deleted and made again is a second Job of that attempt, too.
    """
    violations: list[Violation] = []
    job_uids: dict[tuple[str, int], set[str]] = {}
    live_jobs: dict[tuple[str, int], set[str]] = {}
    live_pods: dict[tuple[str, int], set[str]] = {}
    for s in sightings:
        key = (s.job, s.attempt)
        if s.kind == "Job":
            job_uids.setdefault(key, set()).add(s.uid)
            if len(job_uids[key]) > 1:
                violations.append(Violation(s.t, f"{s.job} attempt {s.attempt}: batch Jobs {sorted(job_uids[key])}"))
                job_uids[key] = {s.uid}  # report each new duplicate once
            live = live_jobs.setdefault(key, set())
            (live.discard if s.gone else live.add)(s.uid)
            if len(live) > 1:
                violations.append(Violation(s.t, f"{s.job} attempt {s.attempt}: two batch Jobs at once"))
        else:
            pods = live_pods.setdefault(key, set())
            (pods.add if s.live else pods.discard)(s.uid)
            if len(pods) > nodes.get(s.job, 1):
                violations.append(Violation(s.t, f"{s.job} attempt {s.attempt}: {len(pods)} live pods at once"))
    return violations


def trainer_processes(namespace: str, pod: str) -> list[psutil.Process]:
    """The torchrun worker processes of one pod on the process node (not its launcher)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "forgeline.jobs." not in cmd or "forgeline.jobs.launch" in cmd:
            continue
        try:
            env = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if env.get("HOSTNAME") == pod and f"/pods/{namespace}/" in env.get("HOME", ""):
            found.append(proc)
    return found


def launcher_process(namespace: str, pod: str) -> psutil.Process | None:
    """The pod's main process (forgeline.jobs.launch, torchrun's agent): SIGTERM there is a pod stop."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "forgeline.jobs.launch" not in cmd:
            continue
        try:
            env = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        if env.get("HOSTNAME") == pod and f"/pods/{namespace}/" in env.get("HOME", ""):
            return proc
    return None
