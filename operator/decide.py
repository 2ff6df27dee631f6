"""One reconcile pass, pure: the job object + a snapshot of what exists -> a Plan.

`decide` reads one snapshot (the job object, its batch Jobs and pods, its upstreams, the time) and
returns what to change; it never remembers anything between passes, so an operator that was killed
and restarted converges from whatever it finds. The policies (policies/) each decide one thing;
this module only strings them together in order: finished, inputs, suspend, deadlines, the
current attempt. reconcile.py observes and acts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from forgeline.api.kinds import Job
from forgeline.api.stageconfig import output_uri
from forgeline.operator.conditions import find_condition, is_true, set_condition
from forgeline.operator.policies import pods as podinfo
from forgeline.operator.policies.deadline import check_active_deadline
from forgeline.operator.policies.inputs import (
    URI_RECHECK_SECONDS,
    UriCheck,
    chain_problems,
    frozen_inputs,
    resolve_inputs,
)
from forgeline.operator.policies.output import final_progress, output_from_pods
from forgeline.operator.policies.restart import classify_attempt, decide_restart, gang_broken
from forgeline.operator.policies.startup import check_startup
from forgeline.operator.policies.suspend import suspend_action
from forgeline.operator.policies.ttl import check_ttl
from forgeline.operator.progress import rfc3339
from forgeline.operator.render import (
    KUEUE_QUEUE_LABEL,
    LABEL_ATTEMPT,
    Owner,
    RenderSettings,
    child_name,
    render_attempt,
)

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")
PROGRESS_INTERVAL = 15.0  # seconds between scrapes of rank 0's metrics endpoint


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


def attempt_of(obj: Obj) -> int | None:
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
    current = next((c for c in live_children if attempt_of(c) == attempt), None)
    pods = [pod for pod in observed.pods if _controller_uid(pod) not in foreign_uids]
    attempt_pods = [pod for pod in pods if attempt_of(pod) == attempt]
    for child in live_children:
        number = attempt_of(child)
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
