"""Reconcile, level-based: observe through the client port, decide (decide.py), then act in a
crash-safe order:

1. write the status first: it records the intent (attempt N+1, restarts+1), guarded by the
   object's resourceVersion, so two passes can never both count one failure. A new attempt's
   ConfigMap, Service and PodGroup go out with it: they start nothing, their names are the
   attempt's, and applying them again is a no-op, so a write that fails (409) or a pass that
   dies leaves at worst what the next pass applies again under the same names;
2. only once the status is written: delete children, then create the batch Job. Names are
   deterministic per attempt, so a pass that dies half-way is finished by the next one and never
   makes a duplicate Job. The Job is created, not applied: a name already taken (a deleted
   namesake's Job not yet collected) is a 409 and a pass on the latest state, never an adoption
   of someone else's pods. It is created only once everything its pods need exists, so a pass
   that dies before it leaves no Job without its config;
3. then emit one Event per condition transition.

The requests of one step that do not depend on each other go out at once. The object is read
while its batch Jobs are listed. A new job's first pass is then three round trips (read and
list; the status with ConfigMap + Service + PodGroup; the Job) instead of seven in a row, and the
listings are answered from the API server's watch cache (`_list`), without waiting for it.

The resourceVersion each status write made is kept per job (`written`), so the controller can
tell the watch event of the operator's own write from anyone else's and not run a pass for it.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from functools import partial
from typing import Protocol, TypeVar

from forgeline.api.chain import JobKey, references_of
from forgeline.api.kinds import API_VERSION
from forgeline.api.validate import InvalidManifest, parse_job
from forgeline.operator.conditions import set_condition
from forgeline.operator.decide import (
    PROGRESS_INTERVAL,
    TERMINAL,
    Obj,
    Observed,
    Plan,
    attempt_of,
    decide,
    queued_job,
)
from forgeline.operator.policies import kueue
from forgeline.operator.policies import pods as podinfo
from forgeline.operator.policies.inputs import (
    UriCheck,
    upstream_keys,
)
from forgeline.operator.progress import parse_progress, rfc3339
from forgeline.operator.render import RenderSettings, children_selector

MAX_CHAIN = 64  # upstream jobs walked for chain checks; pipelines are a handful deep
MAX_MESSAGE = 4096  # characters of a Failed condition's message (an exception can say a lot)
Key = tuple[str, str, str]  # (kind, namespace, name)
T = TypeVar("T")
log = logging.getLogger(__name__)


def of_listed_jobs(pods: list[Obj], jobs: list[Obj]) -> list[Obj]:
    """The pods whose batch Job is among `jobs` (listed before them, in the same pass). A pod of a
    Job that is gone belongs to no attempt: a deleted namesake's whose garbage collection has not
    reached its pods yet carries our labels and the same attempt number, and judged as ours it
    would fail a re-created job with the old one's exit code. Pods without the Job controller's
    label (none in a real cluster) are kept."""
    uids = {str((j.get("metadata") or {}).get("uid")) for j in jobs}
    kept = []
    for pod in pods:
        owner = podinfo.controller_uid(pod)
        if owner is None or owner in uids:
            kept.append(pod)
    return kept


class ClusterPort(Protocol):
    """Everything reconcile needs from a cluster (client.py implements it over the official client)."""

    def get(self, kind: str, namespace: str, name: str) -> Obj | None: ...
    def apply(self, obj: Obj) -> None: ...
    def create(self, obj: Obj) -> str | None: ...  # 409 if the name is taken; the resourceVersion made
    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...
    def list_children(
        self, kind: str, namespace: str, selector: dict[str, str], since: str | None = None
    ) -> tuple[list[Obj], str | None]: ...  # (objects, resourceVersion); since: None latest, "0" any
    def patch_status(
        self, kind: str, namespace: str, name: str, status: Obj, resource_version: str
    ) -> str | None: ...  # the resourceVersion written, where the port can tell
    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None: ...
    def scrape(self, url: str) -> str | None: ...


class Reconciler:
    """Observe through the port, decide, act. One instance per operator; thread-safe per key
    as long as one key is reconciled by one thread at a time (the work queue guarantees it)."""

    def __init__(
        self,
        port: ClusterPort,
        settings: RenderSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_plan: Callable[[str, Obj, Plan], None] | None = None,
        check_uri: Callable[[str], UriCheck] | None = None,
        on_finished: Callable[[str, str], None] | None = None,
        concurrent_requests: int = 1,
    ) -> None:
        self.port = port
        # Called with (kind, Succeeded|Failed) once per job: on the status write, by this process,
        # that first made it terminal (a restarted operator reads it terminal and counts nothing).
        self.on_finished = on_finished
        self.check_uri = check_uri  # artifacts.StoreProbe when the operator may read the store
        self.settings = settings
        self.clock = clock
        self.on_plan = on_plan
        self._scraped: dict[Key, tuple[float, tuple[float, float] | None]] = {}
        # job -> the resourceVersion of this process's last status write to it (dropped when the
        # job is gone), so its watch event can be told from anyone else's.
        self.written: dict[Key, str] = {}
        # Independent requests of one step at once (the controller's choice; one at a time when
        # 1, as in the unit tests, whose in-memory port then records a fixed order).
        self._pool = (
            ThreadPoolExecutor(concurrent_requests, thread_name_prefix="forgeline-request")
            if concurrent_requests > 1
            else None
        )
        self._workload_errors: set[str] = set()  # each kind of failure to read Workloads, logged once
        # (job, "Job" | "Pod") -> the resourceVersion its next listing must be at least as new as
        # (None: the latest state); see _list.
        self._read_at: dict[tuple[Key, str], str | None] = {}

    def reconcile(self, kind: str, namespace: str, name: str) -> float | None:
        """One pass for one job; returns seconds until it wants to look again (None: on events only)."""
        # The children's selector needs only the key: the batch Jobs are listed while the object
        # is read (one round trip for both; _list says why a listing never misses what an earlier
        # pass of ours made).
        key = (kind, namespace, name)
        selector = children_selector(kind, name)
        listing = self._start(partial(self._list, key, "Job", selector))
        body = self.port.get(kind, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            self.forget(key)
            return None
        try:
            job = parse_job(body)
        except InvalidManifest as exc:  # the CRD schema should make this unreachable
            self._write_invalid(kind, body, str(exc))
            return None
        except Exception as exc:  # any object, however odd, ends in a condition, never a crash loop
            self._write_invalid(kind, body, f"the operator cannot read this object: {type(exc).__name__}: {exc}")
            return None
        status = body.get("status") or {}
        children: list[Obj] = []
        pods: list[Obj] = []
        upstreams: dict[str, Obj | None] = {}
        graph: list[Obj] = []
        uri_checks: dict[str, UriCheck] = {}
        # Batch Jobs always: at attempt 0 too, where one may be left over from a deleted object
        # of the same name (decide() deletes it before making its own).
        if status.get("attempt"):
            pods = self._list(key, "Pod", selector)
        else:
            # No attempt recorded means no child of ours was ever made (status is written before
            # any child is applied), so a new job skips listing pods on its way to its first ones.
            upstreams = {role: self.port.get(k.kind, namespace, k.name) for role, k in upstream_keys(job).items()}
            graph = self._upstream_graph(JobKey(kind, name), namespace, [b for b in upstreams.values() if b])
            if self.check_uri is not None:
                uri_checks = {r.role: self.check_uri(r.uri) for r in references_of(job) if r.uri}
        children = listing.result()
        pods = of_listed_jobs(pods, children)
        now = self.clock()
        progress = self._progress(key, status, pods, now)
        workload = self._workload(namespace, queued_job(status, children))  # only for a Job Kueue holds
        observed = Observed(
            body, children, pods, upstreams, now, progress, graph=graph, uri_checks=uri_checks, workload=workload
        )
        try:
            plan = decide(job, observed, self.settings)
        except Exception as exc:  # decide and render are pure: the same object fails the same way
            # again, so retrying cannot help; say so on the object and leave every other job alone.
            self._write_invalid(
                kind, body, f"the operator cannot render this job: {type(exc).__name__}: {exc}", reason="RenderFailed"
            )
            return None
        # The status, with what the new attempt's pods need: its ConfigMap, Service and PodGroup.
        first: list[Callable[[], None]] = [
            partial(self.port.apply, obj) for obj in plan.apply if obj.get("kind") != "Job"
        ]
        if plan.status != status:
            version = str(body["metadata"].get("resourceVersion", ""))
            first.insert(0, partial(self._patch_status, key, plan.status, version))
        self._at_once(first)
        if plan.status != status:
            self._finished(kind, status, plan.status)
        # Only once the status is written: deletes, then the Job.
        self._at_once([partial(self.port.delete, v, k, namespace, child) for v, k, child in plan.delete])
        self._at_once([partial(self._create_job, key, obj) for obj in plan.apply if obj.get("kind") == "Job"])
        if plan.handoff_from is not None:  # measured once the downstream's Job exists
            plan.handoff_seconds = max(0.0, (self.clock() - plan.handoff_from).total_seconds())
        for type_, reason, message in plan.events:
            self.port.event(body, type_, reason, message)
        if plan.delete_self:
            self.port.delete(API_VERSION, kind, namespace, name)
            self.forget(key)
        if self.on_plan is not None:
            self.on_plan(kind, status, plan)
        return plan.requeue_after

    def _workload(self, namespace: str, job: Obj | None) -> Obj | None:
        """Kueue's Workload of a suspended, queued Job. Optional: without Kueue (404) or the RBAC
        to read it (403), or on any error, the pass goes on without it (a generic message), and
        each kind of failure is logged once."""
        if job is None:
            return None
        uid = str((job.get("metadata") or {}).get("uid", ""))
        try:
            workloads, _ = self.port.list_children("Workload", namespace, {kueue.WORKLOAD_JOB_UID: uid})
            return kueue.workload_of(workloads, uid)
        except Exception as exc:
            kind = str(getattr(exc, "status", type(exc).__name__))
            if kind not in self._workload_errors:
                self._workload_errors.add(kind)
                log.warning("Kueue Workloads not read (%s); queued jobs say less about why they wait", exc)
            return None

    def _patch_status(self, key: Key, status: Obj, resource_version: str) -> None:
        written = self.port.patch_status(*key, status, resource_version)
        if written:
            self.written[key] = written
        else:
            self.written.pop(key, None)

    def forget(self, key: Key) -> None:
        """Drop what is kept about a job that is gone."""
        self._scraped.pop(key, None)
        self.written.pop(key, None)
        for kind in ("Job", "Pod"):
            self._read_at.pop((key, kind), None)

    def _list(self, key: Key, kind: str, selector: dict[str, str]) -> list[Obj]:
        """The job's batch Jobs or pods, from the API server's watch cache, never older than what
        this process last saw of them or, for Jobs, created. A pass then reads its own writes and
        never goes back in time, and the server answers at once: a read of the latest state waits
        up to 100 ms for its cache to catch up with etcd, and it was most of a new job's first
        pass. With nothing seen yet (a new job, or after a restart), batch Jobs are read at any
        version: a Job missed creates its name again and the 409 sends the next pass to the
        latest state (_create_job). Pods are read at the latest state then: a status written by
        an earlier leader may say the gang was Running, and an older view without its pods would
        read as a broken gang."""
        since = self._read_at.get((key, kind), "0" if kind == "Job" else None)
        items, version = self.port.list_children(kind, key[1], selector, since)
        if version:
            self._read_at[(key, kind)] = version
        return items

    def _create_job(self, key: Key, obj: Obj) -> None:
        """Create (never adopt) the attempt's Job; its version is the least the next listing reads."""
        try:
            made = self.port.create(obj)
        except Exception as exc:
            if getattr(exc, "status", None) == 409:  # the name is taken: read the latest state next
                self._read_at[(key, "Job")] = None
            raise
        if made:
            self._read_at[(key, "Job")] = made

    def _start(self, request: Callable[[], T]) -> Future[T]:
        """A request sent now, its answer read later (at once, without a pool)."""
        if self._pool is not None:
            return self._pool.submit(request)
        done: Future[T] = Future()
        try:
            done.set_result(request())
        except Exception as exc:
            done.set_exception(exc)
        return done

    def _at_once(self, requests: list[Callable[[], None]]) -> None:
        """Send independent requests together; once all have ended, raise the first failure."""
        if self._pool is None or len(requests) <= 1:
            for request in requests:
                request()
            return
        futures = [self._pool.submit(request) for request in requests]
        wait(futures)
        for future in futures:
            future.result()

    def _finished(self, kind: str, old: Obj, new: Obj) -> None:
        """After a status write that succeeded (a 409 raised before): terminal for the first time?"""
        if self.on_finished is not None and old.get("state") not in TERMINAL and new.get("state") in TERMINAL:
            self.on_finished(kind, str(new["state"]))

    def _upstream_graph(self, own: JobKey, namespace: str, direct: list[Obj]) -> list[Obj]:
        """Every job reachable upstream (bounded), so a cycle through this job can be named."""
        graph: list[Obj] = []
        seen = {own}
        frontier = list(direct)
        while frontier and len(graph) < MAX_CHAIN:
            body = frontier.pop()
            key = JobKey(str(body.get("kind")), str((body.get("metadata") or {}).get("name")))
            if key in seen:
                continue
            seen.add(key)
            graph.append(body)
            try:
                refs = references_of(parse_job(body))
            except InvalidManifest:
                continue
            for ref in refs:
                if ref.upstream is not None and ref.upstream not in seen:
                    found = self.port.get(ref.upstream.kind, namespace, ref.upstream.name)
                    if found is not None:
                        frontier.append(found)
        return graph

    def _progress(self, key: Key, status: Obj, pods: list[Obj], now: datetime) -> Obj | None:
        """Scrape rank 0 at most every PROGRESS_INTERVAL seconds, only while Running."""
        if status.get("state") != "Running" or not self.settings.metrics_port:
            return None
        last, previous = self._scraped.get(key, (0.0, None))
        if time.monotonic() - last < PROGRESS_INTERVAL:
            return None
        attempt = int(status.get("attempt") or 0)
        rank0 = next(
            (p for p in pods if podinfo.rank(p) == 0 and attempt_of(p) == attempt and podinfo.running(p)), None
        )
        ip = ((rank0 or {}).get("status") or {}).get("podIP")
        self._scraped[key] = (time.monotonic(), previous)
        if not ip:
            return None
        # The port the attempt was rendered with (a range hashes it per attempt): the pod says.
        ports = [p for c in (rank0 or {}).get("spec", {}).get("containers", []) for p in c.get("ports") or []]
        port = next((p.get("containerPort") for p in ports if p.get("name") == "metrics"), self.settings.metrics_port)
        text = self.port.scrape(f"http://{ip}:{port}/metrics")
        if text is None:
            return None
        progress, sample = parse_progress(text, now, previous)
        self._scraped[key] = (time.monotonic(), sample)
        return progress

    def _write_invalid(self, kind: str, body: Obj, message: str, reason: str = "InvalidSpec") -> None:
        """Failed, with the cause; nothing else of a status we may not be able to read is kept."""
        meta = body["metadata"]
        status = body.get("status")
        status = copy.deepcopy(status) if isinstance(status, dict) else {}
        old = status.get("conditions")
        old = [c for c in old if isinstance(c, dict)] if isinstance(old, list) else []
        message = message[:MAX_MESSAGE]
        now = rfc3339(self.clock())
        conditions, _ = set_condition(old, "Failed", "True", reason, message, now=now)
        # completionTime: Failed is finished, so ttlSecondsAfterFinished applies from here.
        new = {
            **status,
            "state": "Failed",
            "conditions": conditions,
            "completionTime": status.get("completionTime") or now,
        }
        if new != (body.get("status") or {}):
            self._patch_status((kind, meta.get("namespace", "default"), meta["name"]), new, meta["resourceVersion"])
            self._finished(kind, status, new)
            self.port.event(body, "Warning", reason, message)
