"""Reconcile, level-based: the job object + its observed children -> actions + the new status.

`decide` is pure: it reads one snapshot (the job object, its batch Jobs and pods, its upstreams,
the time) and returns a Plan; it never remembers anything between passes, so an operator that was
killed and restarted converges from whatever it finds. `Reconciler` is the thin impure shell:
observe through the client port, decide, then act in a crash-safe order:

1. write the status first: it records the intent (attempt N+1, restarts+1), guarded by the
   object's resourceVersion, so two passes can never both count one failure;
2. then delete and apply children: names are deterministic per attempt, so a pass that dies
   half-way is finished by the next one and never makes a duplicate Job;
3. then emit one Event per condition transition.

The policies (policies/) each decide one thing; this module only strings them together.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from forgeline.operator.api.kinds import API_VERSION, Job
from forgeline.operator.chain import JobKey, references_of
from forgeline.operator.conditions import find_condition, is_true, set_condition
from forgeline.operator.policies import pods as podinfo
from forgeline.operator.policies.deadline import check_active_deadline
from forgeline.operator.policies.inputs import (
    URI_RECHECK_SECONDS,
    UriCheck,
    chain_problems,
    frozen_inputs,
    resolve_inputs,
    upstream_keys,
)
from forgeline.operator.policies.output import final_progress, output_from_pods
from forgeline.operator.policies.restart import classify_attempt, decide_restart, gang_broken
from forgeline.operator.policies.startup import check_startup
from forgeline.operator.policies.suspend import suspend_action
from forgeline.operator.policies.ttl import check_ttl
from forgeline.operator.progress import parse_progress, rfc3339
from forgeline.operator.render import (
    KUEUE_QUEUE_LABEL,
    LABEL_ATTEMPT,
    Owner,
    RenderSettings,
    child_name,
    job_labels,
    render_attempt,
)
from forgeline.operator.stageconfig import output_uri
from forgeline.operator.validate import InvalidManifest, parse_job

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")
PROGRESS_INTERVAL = 15.0  # seconds between scrapes of rank 0's metrics endpoint
MAX_CHAIN = 64  # upstream jobs walked for chain checks; pipelines are a handful deep


class ClusterPort(Protocol):
    """Everything reconcile needs from a cluster (client.py implements it over the official client)."""

    def get(self, kind: str, namespace: str, name: str) -> Obj | None: ...
    def apply(self, obj: Obj) -> None: ...
    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None: ...
    def list_children(self, kind: str, namespace: str, selector: dict[str, str]) -> list[Obj]: ...
    def patch_status(self, kind: str, namespace: str, name: str, status: Obj, resource_version: str) -> None: ...
    def event(self, involved: Obj, type_: str, reason: str, message: str) -> None: ...
    def scrape(self, url: str) -> str | None: ...


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Observed:
    body: Obj  # the job object as read at the start of this pass
    children: list[Obj]  # batch Jobs labelled for this job (every attempt)
    pods: list[Obj]  # pods labelled for this job (every attempt)
    upstreams: dict[str, Obj | None]  # role -> upstream object (read only before the first attempt)
    now: datetime
    progress: Obj | None = None  # a fresh status.progress scraped from rank 0, if any
    graph: list[Obj] = field(default_factory=list)  # every job upstream of this one (chain checks)
    uri_checks: dict[str, UriCheck] = field(default_factory=dict)  # role -> what a direct uri holds


@dataclass
class Plan:
    status: Obj
    apply: list[Obj] = field(default_factory=list)
    delete: list[tuple[str, str, str]] = field(default_factory=list)  # (apiVersion, kind, name)
    delete_self: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None
    # For the operator's metrics (metrics.py), not for the cluster:
    restart_reason: str | None = None
    gang_started_after: float | None = None
    handoff_from: datetime | None = None  # the last upstream's completion, when this pass starts a chained job
    handoff_seconds: float | None = None  # from it to this pass's children applied (set by Reconciler)

    def requeue(self, seconds: float | None) -> None:
        if seconds is not None:
            self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


_WARNING = {"Failed", "Restarting"}
_BENIGN = {"WaitingForUpstream", "WaitingForAdmission", "PodsStarting", "Resumed", "Recovered"}


class _Pass:
    """One decide() pass: the working status, the plan, and condition bookkeeping with events."""

    def __init__(self, job: Job, observed: Observed, settings: RenderSettings) -> None:
        self.job = job
        self.obs = observed
        self.settings = settings
        self.meta = observed.body.get("metadata") or {}
        self.status: Obj = copy.deepcopy(observed.body.get("status") or {})
        self.status.setdefault("conditions", [])
        self.plan = Plan(status=self.status)
        self.now = rfc3339(observed.now)
        self.generation = self.meta.get("generation")
        self.blocked: set[str] = set()  # child names held by a leftover of an earlier object

    @property
    def attempt(self) -> int:
        return int(self.status.get("attempt") or 0)

    def condition(self, type_: str, status: str, reason: str, message: str = "", *, quiet: bool = False) -> None:
        """Set a condition; a transition (status flip, or a new reason) becomes an Event unless
        `quiet` (a condition that only echoes another one's transition)."""
        old = find_condition(self.status["conditions"], type_)
        self.status["conditions"], flipped = set_condition(
            self.status["conditions"], type_, status, reason, message, now=self.now, generation=self.generation
        )
        changed = flipped or (old is not None and old.get("reason") != reason)
        if not changed or quiet or (old is None and status == "False" and type_ != "InputsReady"):
            return
        warning = (type_ in _WARNING and status == "True") or (
            status == "False" and type_ in ("InputsReady", "Running") and reason not in _BENIGN
        )
        text = f"{type_}={status}: {message}" if message else f"{type_}={status}"
        self.plan.events.append(("Warning" if warning else "Normal", reason, text))

    def delete_attempt(self, attempt: int) -> None:
        name = child_name(self.job, attempt)
        self.plan.delete += [("batch/v1", "Job", name), ("v1", "Service", name), ("v1", "ConfigMap", name)]

    def apply_attempt(self, attempt: int) -> None:
        if child_name(self.job, attempt) in self.blocked:
            # A leftover Job of that name is being deleted (batch Job specs are immutable): apply
            # once it is gone; its deletion event brings the next pass.
            self.plan.requeue(1.0)
            return
        inputs = frozen_inputs(self.status.get("inputs") or [])
        owner = Owner(
            uid=str(self.meta.get("uid", "")),
            labels=dict(self.meta.get("labels") or {}),
            annotations=dict(self.meta.get("annotations") or {}),
        )
        self.plan.apply += render_attempt(self.job, owner, attempt, inputs, self.settings)

    def finish(self, state: str, reason: str, message: str) -> None:
        """Succeeded or Failed: one-way; the other conditions settle."""
        self.status["state"] = state
        # Microseconds: downstream jobs measure their hand-off from this instant (metrics.py).
        self.status["completionTime"] = (
            self.obs.now.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        )
        self.condition(state, "True", reason, message)
        self.condition("Running", "False", reason, message, quiet=True)
        if find_condition(self.status["conditions"], "Restarting") is not None:
            self.condition("Restarting", "False", reason, message, quiet=True)


def _attempt_of(obj: Obj) -> int | None:
    try:
        return int(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT, ""))
    except ValueError:
        return None


def _owned_by(obj: Obj, uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return not refs or not uid or any(r.get("uid") == uid for r in refs)


def _controller_uid(pod: Obj) -> str | None:
    return ((pod.get("metadata") or {}).get("labels") or {}).get("batch.kubernetes.io/controller-uid")


def _replicas(pods: list[Obj]) -> Obj:
    counts = {"pending": 0, "running": 0, "succeeded": 0, "failed": 0}
    for pod in pods:
        key = {"Running": "running", "Succeeded": "succeeded", "Failed": "failed"}.get(podinfo.phase(pod), "pending")
        counts[key] += 1
    return counts


def _attempt_started(child: Obj | None, now: datetime) -> datetime | None:
    """When the attempt's clock starts: the Job's start (set on creation or Kueue admission)."""
    if child is None:
        return now
    spec = child.get("spec") or {}
    status = child.get("status") or {}
    if spec.get("suspend"):
        return None  # waiting for admission: not late yet
    return parse_time(status.get("startTime")) or parse_time((child.get("metadata") or {}).get("creationTimestamp"))


def decide(job: Job, observed: Observed, settings: RenderSettings) -> Plan:
    """One reconcile pass, pure. Returns what to change; Reconciler does it."""
    p = _Pass(job, observed, settings)
    st = p.status
    now = observed.now
    policy = job.spec.run_policy
    nodes = job.spec.resources.nodes
    if p.generation is not None:
        st["observedGeneration"] = p.generation
    st.setdefault("attempt", 0)
    st.setdefault("restarts", 0)
    st.setdefault("evictions", 0)

    attempt = p.attempt
    # Children of an earlier object of the same name (deleted and re-created before the garbage
    # collector got to them) carry our labels but not our uid: never adopt them, delete them.
    uid = str(p.meta.get("uid", ""))
    foreign = [c for c in observed.children if not _owned_by(c, uid)]
    foreign_uids = {str((c.get("metadata") or {}).get("uid", "")) for c in foreign}
    for child in foreign:
        if not podinfo.deleting(child):
            p.plan.delete.append(("batch/v1", "Job", str(child["metadata"]["name"])))
    p.blocked = {str(c["metadata"]["name"]) for c in foreign}
    live_children = [c for c in observed.children if not podinfo.deleting(c) and c not in foreign]
    current = next((c for c in live_children if _attempt_of(c) == attempt), None)
    pods = [pod for pod in observed.pods if _controller_uid(pod) not in foreign_uids]
    attempt_pods = [pod for pod in pods if _attempt_of(pod) == attempt]
    for child in live_children:
        number = _attempt_of(child)
        if number is not None and number != attempt:
            p.delete_attempt(number)  # an earlier attempt left behind (a pass died between steps)

    state = st.get("state")
    # -- finished: no pod keeps running; TTL ----------------------------------------------------
    if state in TERMINAL:
        if current is not None and any(podinfo.active(pod) for pod in attempt_pods):
            p.delete_attempt(attempt)
        ttl = check_ttl(parse_time(st.get("completionTime")), now, policy.ttl_seconds_after_finished)
        p.plan.delete_self = ttl.delete_now
        p.plan.requeue(None if ttl.delete_now else ttl.seconds_left)
        return p.plan

    # -- inputs: wait for upstreams, then freeze what was consumed ------------------------------
    if attempt == 0:
        verdict = resolve_inputs(
            job, observed.upstreams, chain=chain_problems(job, observed.graph), uri_checks=observed.uri_checks
        )
        if not verdict.ready:
            st["state"] = "Waiting"
            p.condition("InputsReady", "False", verdict.reason, verdict.message)
            if verdict.reason == "InputManifestMissing":
                p.plan.requeue(URI_RECHECK_SECONDS)  # nothing watches a bucket: look again
            return p.plan
        p.condition("InputsReady", "True", verdict.reason, verdict.message)
        st["inputs"] = verdict.records
        finished = [t for t in map(parse_time, verdict.upstream_completed) if t is not None]
        if finished:
            p.plan.handoff_from = max(finished)

    # -- suspend / resume -----------------------------------------------------------------------
    action = suspend_action(policy.suspend, state == "Suspended", finished=False)
    if action in ("suspend", "stay-suspended"):
        if current is not None:
            p.delete_attempt(attempt)
        st["state"] = "Suspended"
        st["replicas"] = _replicas([])
        p.condition("Suspended", "True", "Suspended", "pods deleted, status kept; set spec.runPolicy.suspend: false")
        if find_condition(st["conditions"], "Running") is not None:
            p.condition("Running", "False", "Suspended", "the job is suspended", quiet=True)
        return p.plan
    if action == "resume" or attempt == 0:
        if action == "resume":
            p.condition(
                "Suspended", "False", "Resumed", f"resumed as attempt {attempt + 1}, from the latest checkpoint"
            )
        attempt += 1
        st["attempt"] = attempt
        st["startTime"] = p.now
        st["state"] = "Created"
        p.apply_attempt(attempt)
        p.condition("Created", "True", "AttemptCreated", f"attempt {attempt}: Job {child_name(job, attempt)}")
        p.condition("Running", "False", "PodsStarting", f"attempt {attempt} created", quiet=True)
        st["replicas"] = _replicas([])
        p.plan.requeue(float(policy.startup_deadline_seconds))
        return p.plan

    # -- activeDeadlineSeconds over all attempts ------------------------------------------------
    deadline = check_active_deadline(parse_time(st.get("startTime")), now, policy.active_deadline_seconds)
    if deadline.exceeded:
        p.delete_attempt(attempt)
        p.finish("Failed", "DeadlineExceeded", deadline.message)
        return p.plan
    p.plan.requeue(deadline.seconds_left)

    # -- the current attempt --------------------------------------------------------------------
    if current is None:
        p.apply_attempt(attempt)  # lost or never made it: create it again (same name, same inputs)
    st["replicas"] = _replicas(attempt_pods)
    outcome = classify_attempt(current, attempt_pods, nodes)
    if outcome.state == "succeeded":
        st["output"] = output_from_pods(output_uri(settings.store, job), attempt_pods)
        if done := final_progress(st["output"], p.now):
            st["progress"] = done
        p.finish("Succeeded", "Completed", f"attempt {attempt} completed; output {st['output']['uri']}")
        p.plan.requeue(float(policy.ttl_seconds_after_finished) if policy.ttl_seconds_after_finished else None)
        return p.plan
    decision = decide_restart(outcome, int(st.get("restarts") or 0), policy.backoff_limit)
    startup = check_startup(attempt_pods, nodes, _attempt_started(current, now), now, policy.startup_deadline_seconds)
    if decision is None and not startup.started and is_true(st["conditions"], "Running"):
        decision = gang_broken(attempt, startup.waiting.message if startup.waiting else "pods missing")
    if decision is not None and decision.action == "fail":
        if any(podinfo.active(pod) for pod in attempt_pods):
            p.delete_attempt(attempt)
        p.finish("Failed", decision.reason, decision.message)
        return p.plan
    if decision is not None:  # restart the whole gang as attempt N+1
        p.delete_attempt(attempt)
        if decision.counted:
            st["restarts"] = int(st.get("restarts") or 0) + 1
        else:
            st["evictions"] = int(st.get("evictions") or 0) + 1
        attempt += 1
        st["attempt"] = attempt
        st["state"] = "Restarting"
        st["replicas"] = _replicas([])
        p.apply_attempt(attempt)
        p.condition("Restarting", "True", decision.reason, f"attempt {attempt - 1}: {decision.message}")
        p.condition("Running", "False", "Restarting", f"starting attempt {attempt}", quiet=True)
        p.plan.restart_reason = decision.reason
        p.plan.requeue(float(policy.startup_deadline_seconds))
        return p.plan

    if startup.exceeded is not None:
        p.delete_attempt(attempt)
        p.finish("Failed", startup.exceeded.reason, startup.exceeded.message)
        return p.plan
    if startup.started:
        st["state"] = "Running"
        was_running = is_true(st["conditions"], "Running")
        p.condition("Running", "True", "AllPodsRunning", f"attempt {attempt}: all {nodes} pods running")
        if is_true(st["conditions"], "Restarting"):
            p.condition("Restarting", "False", "Recovered", f"attempt {attempt} is running")
        if not was_running and current is not None:
            started = parse_time((current.get("metadata") or {}).get("creationTimestamp"))
            if started is not None:
                p.plan.gang_started_after = max(0.0, (now - started).total_seconds())
        if observed.progress is not None:
            st["progress"] = observed.progress
        p.plan.requeue(PROGRESS_INTERVAL)
        return p.plan
    st["state"] = "Restarting" if is_true(st["conditions"], "Restarting") else "Created"
    queue = (observed.body.get("metadata") or {}).get("labels", {}).get(KUEUE_QUEUE_LABEL)
    if current is not None and (current.get("spec") or {}).get("suspend") and queue:
        p.condition("Running", "False", "WaitingForAdmission", f"Job {child_name(job, attempt)} is queued in {queue}")
    elif startup.waiting is not None:
        p.condition("Running", "False", startup.waiting.reason, startup.waiting.message)
    p.plan.requeue(startup.seconds_left)
    return p.plan


# ------------------------------------------------------------------------------------ the shell


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
    ) -> None:
        self.port = port
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
        plan = decide(job, observed, self.settings)
        if plan.status != status:
            self.port.patch_status(kind, namespace, name, plan.status, str(body["metadata"].get("resourceVersion", "")))
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
            (p for p in pods if podinfo.rank(p) == 0 and _attempt_of(p) == attempt and podinfo.running(p)), None
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

    def _write_invalid(self, kind: str, body: Obj, message: str) -> None:
        meta = body["metadata"]
        status = copy.deepcopy(body.get("status") or {})
        conditions, _ = set_condition(
            status.get("conditions") or [], "Failed", "True", "InvalidSpec", message, now=rfc3339(self.clock())
        )
        new = {**status, "state": "Failed", "conditions": conditions}
        if new != (body.get("status") or {}):
            self.port.patch_status(kind, meta.get("namespace", "default"), meta["name"], new, meta["resourceVersion"])
            self.port.event(body, "Warning", "InvalidSpec", message)
