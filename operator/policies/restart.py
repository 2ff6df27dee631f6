"""Restart policy: what ended an attempt, and whether the whole gang restarts or the job fails.

NCCL needs the whole gang restarted together: restarting one pod leaves its peers blocked in a
collective until a timeout. So any retryable pod failure ends the attempt, and the next attempt is
a new Job (new names, new rendezvous id) that resumes from the latest complete checkpoint.

* exit 2 (bad config) or 3 (missing input): permanent, the job fails at once, no retry;
* a disrupted pod (eviction, preemption, node drain: the DisruptionTarget condition): restart,
  and it does not count against backoffLimit, because the user's code did nothing wrong;
* any other failure: restart while restarts < backoffLimit, then fail with BackoffLimitExceeded.

* a pod of a gang that was already running is gone (deleted, its node lost) with no failure to
  read: restart, not counted; the survivors would only wait in NCCL for a peer that never comes.

When several pods failed, the earliest failure is the cause; the others are usually its echo (a
peer's NCCL error after rank 3 was OOM-killed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from forgeline.jobs.errors import PERMANENT_EXIT_REASONS
from forgeline.operator.policies.pods import (
    Obj,
    active,
    disrupted,
    exit_code,
    failure_cause,
    job_condition,
    name_of,
    phase,
    terminated,
)

PERMANENT = PERMANENT_EXIT_REASONS


@dataclass(frozen=True)
class AttemptOutcome:
    state: Literal["starting", "running", "succeeded", "permanent", "retryable", "evicted"]
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class RestartDecision:
    action: Literal["restart", "fail"]
    counted: bool
    reason: str
    message: str


def _finished_at(pod: Obj) -> str:
    return str((terminated(pod) or {}).get("finishedAt") or "~")


def classify_attempt(child: Obj | None, pods: list[Obj], nodes: int) -> AttemptOutcome:
    """The state of one attempt from its Job and pods (pods being deleted are ignored)."""
    if child is not None and (job_condition(child, "Complete") or job_condition(child, "SuccessCriteriaMet")):
        return AttemptOutcome("succeeded", "Completed", f"all {nodes} pods completed")
    failed = sorted((p for p in pods if phase(p) == "Failed"), key=_finished_at)
    for pod in failed:
        code = exit_code(pod)
        if code in PERMANENT and not disrupted(pod):
            cause = failure_cause(pod)
            return AttemptOutcome("permanent", PERMANENT[code], cause.message)
    evicted = [p for p in failed if disrupted(p)]
    if evicted:
        cause = failure_cause(evicted[0])
        return AttemptOutcome("evicted", "Evicted", cause.message)
    if failed:
        cause = failure_cause(failed[0])
        return AttemptOutcome("retryable", cause.reason, cause.message)
    if child is not None and (failure := job_condition(child, "Failed")):
        # The pods are gone (garbage-collected, deleted by hand): the Job's condition is all we have.
        reason = str(failure.get("reason") or "JobFailed")
        message = f"Job {name_of(child)} failed: {failure.get('message') or reason}"
        if reason == "PodFailurePolicy":
            return AttemptOutcome("permanent", "PodFailurePolicy", message)
        return AttemptOutcome("retryable", reason, message)
    live = [p for p in pods if active(p) or phase(p) == "Succeeded"]
    if len(live) >= nodes and all(phase(p) in ("Running", "Succeeded") for p in live):
        return AttemptOutcome("running", "AllPodsRunning", f"all {nodes} pods are running")
    return AttemptOutcome("starting")


def decide_restart(outcome: AttemptOutcome, restarts: int, backoff_limit: int) -> RestartDecision | None:
    """None while the attempt is healthy or done; else restart (counted or not) or fail."""
    if outcome.state == "permanent":
        return RestartDecision("fail", False, outcome.reason, f"{outcome.message} (permanent: not retried)")
    if outcome.state == "evicted":
        return RestartDecision("restart", False, "Evicted", f"{outcome.message}; restarting (not counted)")
    if outcome.state == "retryable":
        if restarts < backoff_limit:
            return RestartDecision(
                "restart", True, outcome.reason, f"{outcome.message}; restart {restarts + 1} of {backoff_limit}"
            )
        return RestartDecision(
            "fail",
            False,
            "BackoffLimitExceeded",
            f"{outcome.message}; no restarts left ({restarts} of backoffLimit {backoff_limit} used)",
        )
    return None


def gang_broken(attempt: int, detail: str) -> RestartDecision:
    """The attempt was running and has fewer running pods now, with no failed pod to blame."""
    return RestartDecision(
        "restart", False, "PodLost", f"attempt {attempt} lost a pod after it was running ({detail}); restarting"
    )
