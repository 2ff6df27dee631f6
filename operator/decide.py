"""One reconcile pass, pure: the job object + a snapshot of what exists -> a Plan.

`decide` reads one snapshot (the job object, its batch Jobs and pods, its upstreams, the time) and
returns what to change; it never remembers anything between passes, so an operator that was killed
and restarted converges from whatever it finds. The policies (policies/) each decide one thing;
this module strings them together as named steps. The first step that settles the pass ends it,
so the order is the precedence:

1. `_sort_children` (always): children of a deleted namesake and attempts left behind are deleted
   whatever else the pass decides; the current attempt's Job and pods are picked out;
2. `_settle_finished`: Succeeded and Failed are one-way; a finished job only stops stray pods and
   waits out its TTL, so no later step can start anything for it;
3. `_preflight`, then `_wait_for_inputs` (before the first attempt only): a job the operator can
   tell will not run (another namespace's artifacts, reserved labels, settings its upstream model
   cannot take) fails without a pod; nothing starts until every input is ready (and a gated job
   fails GateFailed when its EvalJob's result misses the condition), and what was consumed is
   frozen into status.inputs so every later attempt reads the same;
4. `_hold_suspended`, then `_start_attempt`: suspend is honoured before any clock is read (a
   parked job is not late); a first start or a resume makes a new attempt and ends the pass;
5. `_enforce_deadline`: activeDeadlineSeconds spans every attempt, so it wins over whatever the
   current attempt is doing;
6. `_restart_evicted_by_kueue`: Kueue took the admitted attempt back (suspended its Job: a
   preemption, ...): a disruption, so a new attempt that costs no retry budget
   (policies/kueue.py says which evictions are not);
7. `_follow_attempt`: the current attempt: success first, then restart-or-fail (a failed pod
   names the real cause), then the startup deadline, then Running or still starting (a queued
   Job's condition quotes Kueue's reason).

reconcile.py observes and acts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from forgeline.api.kinds import Job
from forgeline.api.stageconfig import output_uri
from forgeline.api.validate import InvalidManifest, parse_job
from forgeline.operator.conditions import find_condition, is_true, set_condition
from forgeline.operator.policies import kueue
from forgeline.operator.policies import pods as podinfo
from forgeline.operator.policies.deadline import check_active_deadline
from forgeline.operator.policies.gate import check_gate
from forgeline.operator.policies.inputs import (
    URI_RECHECK_SECONDS,
    UriCheck,
    chain_problems,
    frozen_inputs,
    resolve_inputs,
)
from forgeline.operator.policies.output import final_progress, output_from_pods
from forgeline.operator.policies.preflight import StorePolicy, preflight_problems
from forgeline.operator.policies.restart import (
    AttemptOutcome,
    RestartDecision,
    classify_attempt,
    decide_restart,
    gang_broken,
)
from forgeline.operator.policies.startup import StartupVerdict, check_startup
from forgeline.operator.policies.suspend import Action, suspend_action
from forgeline.operator.policies.ttl import check_ttl
from forgeline.operator.progress import rfc3339
from forgeline.operator.render import (
    KUEUE_QUEUE_LABEL,
    LABEL_ATTEMPT,
    POD_GROUP_API_VERSION,
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
    # Kueue's Workload of the current attempt's Job: read only while that Job is suspended and
    # queued (queued_job), None elsewhere and where Kueue is absent or hidden by RBAC.
    workload: Obj | None = None


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
    """One decide() pass: the working status, the plan, the current attempt's children, and
    condition bookkeeping with events."""

    def __init__(self, job: Job, observed: Observed, settings: RenderSettings) -> None:
        self.job = job
        self.obs = observed
        self.settings = settings
        self.policy = job.spec.run_policy
        self.nodes = job.spec.resources.nodes
        self.meta = observed.body.get("metadata") or {}
        self.status: Obj = copy.deepcopy(observed.body.get("status") or {})
        self.status.setdefault("conditions", [])
        self.plan = Plan(status=self.status)
        self.now = rfc3339(observed.now)
        self.generation = self.meta.get("generation")
        if self.generation is not None:
            self.status["observedGeneration"] = self.generation
        for counter in ("attempt", "restarts", "evictions"):
            self.status.setdefault(counter, 0)
        self.state_before = self.status.get("state")  # the state this pass started from
        # Set by _sort_children:
        self.blocked: set[str] = set()  # child names held by a leftover of an earlier object
        self.current: Obj | None = None  # the current attempt's batch Job, if it exists
        self.attempt_pods: list[Obj] = []  # the current attempt's pods

    @property
    def attempt(self) -> int:
        return int(self.status.get("attempt") or 0)

    def suspend_action(self) -> Action:
        # A finished job never gets here (_settle_finished ends its pass).
        return suspend_action(self.policy.suspend, self.state_before == "Suspended", finished=False)

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
        if self.settings.gang_scheduling:
            self.plan.delete.append((POD_GROUP_API_VERSION, "PodGroup", name))

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

    def next_attempt(self, state: str) -> int:
        """Make attempt N+1 (a fresh gang, a fresh rendezvous) and look again at its deadline."""
        attempt = self.attempt + 1
        self.status["attempt"] = attempt
        self.status["state"] = state
        self.status["replicas"] = _replicas([])
        self.apply_attempt(attempt)
        self.plan.requeue(float(self.policy.startup_deadline))
        return attempt

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


def queued_job(status: Obj, children: list[Obj]) -> Obj | None:
    """The current attempt's batch Job when it is suspended and labelled with a Kueue queue: the
    one Job whose Workload a pass reads (why it waits, or whether Kueue took it back)."""
    attempt = int(status.get("attempt") or 0)
    for child in children:
        meta = child.get("metadata") or {}
        if attempt_of(child) != attempt or podinfo.deleting(child) or not (child.get("spec") or {}).get("suspend"):
            continue
        if KUEUE_QUEUE_LABEL in (meta.get("labels") or {}):
            return child
    return None


def _owned_by(obj: Obj, uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return not refs or not uid or any(r.get("uid") == uid for r in refs)


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


# -- 1. the children: never adopt a namesake's, clean up earlier attempts -----------------------


def _sort_children(p: _Pass) -> None:
    """Pick out the current attempt's Job and pods. Children of an earlier object of the same name
    (deleted and re-created before the garbage collector got to them) carry our labels but not our
    uid: never adopt them, delete them. An earlier attempt of ours left behind (a pass died between
    its steps) is deleted too."""
    uid = str(p.meta.get("uid", ""))
    foreign = [c for c in p.obs.children if not _owned_by(c, uid)]
    foreign_uids = {str((c.get("metadata") or {}).get("uid", "")) for c in foreign}
    for child in foreign:
        if not podinfo.deleting(child):
            p.plan.delete.append(("batch/v1", "Job", str(child["metadata"]["name"])))
    p.blocked = {str(c["metadata"]["name"]) for c in foreign}
    live = [c for c in p.obs.children if not podinfo.deleting(c) and c not in foreign]
    p.current = next((c for c in live if attempt_of(c) == p.attempt), None)
    pods = [pod for pod in p.obs.pods if podinfo.controller_uid(pod) not in foreign_uids]
    p.attempt_pods = [pod for pod in pods if attempt_of(pod) == p.attempt]
    for child in live:
        number = attempt_of(child)
        if number is not None and number != p.attempt:
            p.delete_attempt(number)


# -- 2. finished: no pod keeps running; TTL ------------------------------------------------------


def _settle_finished(p: _Pass) -> bool:
    if p.state_before not in TERMINAL:
        return False
    if p.current is not None and any(podinfo.active(pod) for pod in p.attempt_pods):
        p.delete_attempt(p.attempt)
    ttl = check_ttl(parse_time(p.status.get("completionTime")), p.obs.now, p.policy.ttl_seconds_after_finished)
    p.plan.delete_self = ttl.delete_now
    p.plan.requeue(None if ttl.delete_now else ttl.seconds_left)
    return True


# -- 3. preflight, then inputs: wait for upstreams, then freeze what was consumed ----------------


_SPEC_PARTS = ("apiVersion", "kind", "metadata", "spec")  # what parse_job reads of an upstream (not its status)


def _preflight(p: _Pass) -> bool:
    if p.attempt != 0:
        return False  # checked before the first attempt; the spec is immutable since
    upstreams = []
    for body in p.obs.graph:
        try:
            upstreams.append(parse_job({k: v for k, v in body.items() if k in _SPEC_PARTS}))
        except InvalidManifest:
            continue  # that job reports its own problem
    problems = preflight_problems(
        p.job,
        labels=p.meta.get("labels") or {},
        annotations=p.meta.get("annotations") or {},
        policy=StorePolicy(p.settings.store, p.settings.allowed_uri_prefixes),
        upstreams=upstreams,
    )
    if not problems:
        return False
    p.finish("Failed", "InvalidSpec", "; ".join(map(str, problems)) + " (no pod was started)")
    return True


def _wait_for_inputs(p: _Pass) -> bool:
    if p.attempt != 0:
        return False  # frozen when the first attempt started
    obs = p.obs
    verdict = resolve_inputs(p.job, obs.upstreams, chain=chain_problems(p.job, obs.graph), uri_checks=obs.uri_checks)
    if not verdict.ready:
        p.status["state"] = "Waiting"
        p.condition("InputsReady", "False", verdict.reason, verdict.message)
        if verdict.reason == "InputManifestMissing":
            p.plan.requeue(URI_RECHECK_SECONDS)  # nothing watches a bucket: look again
        return True
    p.condition("InputsReady", "True", verdict.reason, verdict.message)
    p.status["inputs"] = verdict.records
    gate = check_gate(p.job, obs.upstreams)
    if gate is not None and not gate.passed:
        p.finish("Failed", "GateFailed", gate.message + " (no pod was started)")
        return True
    if gate is not None:
        p.plan.events.append(("Normal", "GatePassed", gate.message))
    finished = [t for t in map(parse_time, verdict.upstream_completed) if t is not None]
    if finished:
        p.plan.handoff_from = max(finished)
    return False


# -- 4. suspend, resume, and the first attempt ---------------------------------------------------


def _hold_suspended(p: _Pass) -> bool:
    """Suspended: the attempt's children are deleted, status (attempt, restarts) is kept."""
    if p.suspend_action() not in ("suspend", "stay-suspended"):
        return False
    if p.current is not None:
        p.delete_attempt(p.attempt)
    p.status["state"] = "Suspended"
    p.status["replicas"] = _replicas([])
    p.condition("Suspended", "True", "Suspended", "pods deleted, status kept; set spec.runPolicy.suspend: false")
    if find_condition(p.status["conditions"], "Running") is not None:
        p.condition("Running", "False", "Suspended", "the job is suspended", quiet=True)
    return True


def _start_attempt(p: _Pass) -> bool:
    """The first attempt, or a resume: a new attempt whose clock (status.startTime) starts now."""
    resume = p.suspend_action() == "resume"
    if not resume and p.attempt != 0:
        return False
    if resume:
        p.condition("Suspended", "False", "Resumed", f"resumed as attempt {p.attempt + 1}, from the latest checkpoint")
    p.status["startTime"] = p.now
    attempt = p.next_attempt("Created")
    p.condition("Created", "True", "AttemptCreated", f"attempt {attempt}: Job {child_name(p.job, attempt)}")
    p.condition("Running", "False", "PodsStarting", f"attempt {attempt} created", quiet=True)
    return True


# -- 5. activeDeadlineSeconds over all attempts --------------------------------------------------


def _enforce_deadline(p: _Pass) -> bool:
    deadline = check_active_deadline(parse_time(p.status.get("startTime")), p.obs.now, p.policy.active_deadline_seconds)
    if deadline.exceeded:
        p.delete_attempt(p.attempt)
        p.finish("Failed", "DeadlineExceeded", deadline.message)
        return True
    p.plan.requeue(deadline.seconds_left)
    return False


# -- 6. Kueue took the attempt back ---------------------------------------------------------------


def _restart_evicted_by_kueue(p: _Pass) -> bool:
    """Kueue evicted the admitted attempt (its Job is suspended again, the Workload says why):
    the gang restarts as a new attempt, queued again, counted in status.evictions."""
    if p.current is None or not (p.current.get("spec") or {}).get("suspend"):
        return False
    ran = is_true(p.status["conditions"], "Running")
    decision = kueue.eviction(p.obs.workload, child_name(p.job, p.attempt), ran=ran)
    if decision is None:
        return False
    _restart(p, decision)
    return True


# -- 7. the current attempt ----------------------------------------------------------------------


def _follow_attempt(p: _Pass) -> bool:
    if p.current is None:
        p.apply_attempt(p.attempt)  # lost or never made it: create it again (same name, same inputs)
    p.status["replicas"] = _replicas(p.attempt_pods)
    outcome = classify_attempt(p.current, p.attempt_pods, p.nodes)
    if outcome.state == "succeeded":
        _succeed(p)
        return True
    started_at = _attempt_started(p.current, p.obs.now)
    startup = check_startup(p.attempt_pods, p.nodes, started_at, p.obs.now, p.policy.startup_deadline)
    decision = _restart_decision(p, outcome, startup)
    if decision is not None and decision.action == "fail":
        if any(podinfo.active(pod) for pod in p.attempt_pods):
            p.delete_attempt(p.attempt)
        p.finish("Failed", decision.reason, decision.message)
    elif decision is not None:
        _restart(p, decision)
    elif startup.exceeded is not None:
        p.delete_attempt(p.attempt)
        p.finish("Failed", startup.exceeded.reason, startup.exceeded.message)
    elif startup.started:
        _mark_running(p)
    else:
        _mark_starting(p, startup)
    return True


def _succeed(p: _Pass) -> None:
    """Succeeded, with status.output from rank 0's result; the TTL clock starts."""
    output = output_from_pods(output_uri(p.settings.store, p.job), p.attempt_pods)
    p.status["output"] = output
    if done := final_progress(output, p.now):
        p.status["progress"] = done
    p.finish("Succeeded", "Completed", f"attempt {p.attempt} completed; output {output['uri']}")
    ttl = p.policy.ttl_seconds_after_finished
    p.plan.requeue(float(ttl) if ttl else None)


def _restart_decision(p: _Pass, outcome: AttemptOutcome, startup: StartupVerdict) -> RestartDecision | None:
    """What the failed pods call for; else, a gang that was Running and lost a pod restarts."""
    decision = decide_restart(outcome, int(p.status.get("restarts") or 0), p.policy.backoff_limit)
    if decision is None and not startup.started and is_true(p.status["conditions"], "Running"):
        return gang_broken(p.attempt, startup.waiting.message if startup.waiting else "pods missing")
    return decision


def _restart(p: _Pass, decision: RestartDecision) -> None:
    """The whole gang restarts as attempt N+1; only a counted failure uses backoffLimit."""
    p.delete_attempt(p.attempt)
    counter = "restarts" if decision.counted else "evictions"
    p.status[counter] = int(p.status.get(counter) or 0) + 1
    attempt = p.next_attempt("Restarting")
    p.condition("Restarting", "True", decision.reason, f"attempt {attempt - 1}: {decision.message}")
    p.condition("Running", "False", "Restarting", f"starting attempt {attempt}", quiet=True)
    p.plan.restart_reason = decision.reason


def _mark_running(p: _Pass) -> None:
    """Every pod Running: the gang is up; progress is scraped from rank 0 while it runs."""
    p.status["state"] = "Running"
    was_running = is_true(p.status["conditions"], "Running")
    p.condition("Running", "True", "AllPodsRunning", f"attempt {p.attempt}: all {p.nodes} pods running")
    if is_true(p.status["conditions"], "Restarting"):
        p.condition("Restarting", "False", "Recovered", f"attempt {p.attempt} is running")
    if not was_running and p.current is not None:
        started = parse_time((p.current.get("metadata") or {}).get("creationTimestamp"))
        if started is not None:
            p.plan.gang_started_after = max(0.0, (p.obs.now - started).total_seconds())
    if p.obs.progress is not None:
        p.status["progress"] = p.obs.progress
    if p.settings.metrics_port:  # the next scrape of rank 0; with scraping off, events and resync only
        p.plan.requeue(PROGRESS_INTERVAL)


def _mark_starting(p: _Pass, startup: StartupVerdict) -> None:
    """Not every pod Running yet: say why (queued in Kueue, unschedulable, pulling...)."""
    p.status["state"] = "Restarting" if is_true(p.status["conditions"], "Restarting") else "Created"
    queue = (p.meta.get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    if p.current is not None and (p.current.get("spec") or {}).get("suspend") and queue:
        why = kueue.waiting_message(p.obs.workload)
        message = f"Job {child_name(p.job, p.attempt)} is queued in {queue}" + (f": {why}" if why else "")
        p.condition("Running", "False", "WaitingForAdmission", message)
    elif startup.waiting is not None:
        p.condition("Running", "False", startup.waiting.reason, startup.waiting.message)
    p.plan.requeue(startup.seconds_left)


# The steps after _sort_children, in order; the first that returns True settles the pass.
_STEPS: tuple[Callable[[_Pass], bool], ...] = (
    _settle_finished,
    _preflight,
    _wait_for_inputs,
    _hold_suspended,
    _start_attempt,
    _enforce_deadline,
    _restart_evicted_by_kueue,
    _follow_attempt,
)


def decide(job: Job, observed: Observed, settings: RenderSettings) -> Plan:
    """One reconcile pass, pure. Returns what to change; Reconciler does it."""
    p = _Pass(job, observed, settings)
    _sort_children(p)
    for step in _STEPS:
        if step(p):
            break
    return p.plan
