"""Reconcile, level-based: observe through the client port, decide (decide.py), then act in a
crash-safe order:

1. write the status first: it records the intent (attempt N+1, restarts+1), guarded by the
   object's resourceVersion, so two passes can never both count one failure;
2. then delete and apply children: names are deterministic per attempt, so a pass that dies
   half-way is finished by the next one and never makes a duplicate Job;
3. then emit one Event per condition transition.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

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
)
from forgeline.operator.policies import pods as podinfo
from forgeline.operator.policies.inputs import (
    UriCheck,
    upstream_keys,
)
from forgeline.operator.progress import parse_progress, rfc3339
from forgeline.operator.render import (
    RenderSettings,
    job_labels,
)

MAX_CHAIN = 64  # upstream jobs walked for chain checks; pipelines are a handful deep
MAX_MESSAGE = 4096  # characters of a Failed condition's message (an exception can say a lot)


class ClusterPort(Protocol):
    """Everything reconcile needs from a cluster (client.py implements it over the official client)."""

    def get(self, kind: str, namespace: str, name: str) -> Obj | None: ...
    def apply(self, obj: Obj) -> None: ...
    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...
    def list_children(self, kind: str, namespace: str, selector: dict[str, str]) -> list[Obj]: ...
    def patch_status(self, kind: str, namespace: str, name: str, status: Obj, resource_version: str) -> None: ...
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
    ) -> None:
        self.port = port
        # Called with (kind, Succeeded|Failed) once per job: on the status write, by this process,
        # that first made it terminal (a restarted operator reads it terminal and counts nothing).
        self.on_finished = on_finished
        self.check_uri = check_uri  # artifacts.StoreProbe when the operator may read the store
        self.settings = settings
        self.clock = clock
        self.on_plan = on_plan
        self._scraped: dict[tuple[str, str, str], tuple[float, tuple[float, float] | None]] = {}

    def reconcile(self, kind: str, namespace: str, name: str) -> float | None:
        """One pass for one job; returns seconds until it wants to look again (None: on events only)."""
        body = self.port.get(kind, namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            self._scraped.pop((kind, namespace, name), None)
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
        selector = job_labels(job)
        children: list[Obj] = []
        pods: list[Obj] = []
        upstreams: dict[str, Obj | None] = {}
        graph: list[Obj] = []
        uri_checks: dict[str, UriCheck] = {}
        # Batch Jobs always: at attempt 0 too, where one may be left over from a deleted object
        # of the same name (decide() deletes it before making its own).
        children = self.port.list_children("Job", namespace, selector)
        if status.get("attempt"):
            pods = self.port.list_children("Pod", namespace, selector)
        else:
            # No attempt recorded means no child of ours was ever made (status is written before
            # any child is applied), so a new job skips listing pods on its way to its first ones.
            upstreams = {role: self.port.get(k.kind, namespace, k.name) for role, k in upstream_keys(job).items()}
            graph = self._upstream_graph(JobKey(kind, name), namespace, [b for b in upstreams.values() if b])
            if self.check_uri is not None:
                uri_checks = {r.role: self.check_uri(r.uri) for r in references_of(job) if r.uri}
        now = self.clock()
        progress = self._progress((kind, namespace, name), status, pods, now)
        observed = Observed(body, children, pods, upstreams, now, progress, graph=graph, uri_checks=uri_checks)
        try:
            plan = decide(job, observed, self.settings)
        except Exception as exc:  # decide and render are pure: the same object fails the same way
            # again, so retrying cannot help; say so on the object and leave every other job alone.
            self._write_invalid(
                kind, body, f"the operator cannot render this job: {type(exc).__name__}: {exc}", reason="RenderFailed"
            )
            return None
        if plan.status != status:
            self.port.patch_status(kind, namespace, name, plan.status, str(body["metadata"].get("resourceVersion", "")))
            self._finished(kind, status, plan.status)
        for api_version, child_kind, child in plan.delete:
            self.port.delete(api_version, child_kind, namespace, child)
        for obj in plan.apply:
            self.port.apply(obj)
        if plan.handoff_from is not None:  # measured once the downstream's Job exists
            plan.handoff_seconds = max(0.0, (self.clock() - plan.handoff_from).total_seconds())
        for type_, reason, message in plan.events:
            self.port.event(body, type_, reason, message)
        if plan.delete_self:
            self.port.delete(API_VERSION, kind, namespace, name)
            self._scraped.pop((kind, namespace, name), None)
        if self.on_plan is not None:
            self.on_plan(kind, status, plan)
        return plan.requeue_after

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

    def _progress(self, key: tuple[str, str, str], status: Obj, pods: list[Obj], now: datetime) -> Obj | None:
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
            self.port.patch_status(kind, meta.get("namespace", "default"), meta["name"], new, meta["resourceVersion"])
            self._finished(kind, status, new)
            self.port.event(body, "Warning", reason, message)
