"""Kueue: why a queued attempt waits, and what to do when Kueue takes an admitted one back.

Kueue admits a batch Job by unsuspending it and evicts one by suspending it again (the Job
controller then deletes its pods). Why is written on the Job's Workload (kueue.x-k8s.io; one per
Job, owned by it and labelled with its uid, `kueue.x-k8s.io/job-uid`), in three conditions:
QuotaReserved, Admitted and Evicted (reason Preempted, PodsReadyTimeout, ClusterQueueStopped,
NodeFailures, ...). reconcile.py reads it only for a current attempt whose Job is suspended and
queued; this module reads the Workload it got:

* `waiting_message`: why the attempt waits, in Kueue's words ("couldn't assign flavors to pod set
  main: insufficient unused quota for nvidia.com/gpu in flavor gpu, 8 more needed"), capped, for the
  Running=False/WaitingForAdmission condition;
* `eviction`: whether Kueue took back an attempt it had admitted. That is a disruption, like a pod
  evicted from its node: the gang restarts as a new attempt (a fresh Job, queued again, resuming
  from the latest checkpoint), counted in status.evictions and not against backoffLimit.

One eviction is not a restart: waitForPodsReady's timeout (PodsReadyTimeout) of a gang that never
had all its pods running. Kueue requeues that same Workload with a back-off and deactivates it
after `requeuingStrategy.backoffLimitCount` timeouts; both are counted on the Workload, so a fresh
Job (a fresh Workload) would reset them and a gang that can never start would be admitted, time
out and be made again without end. The attempt stays, waiting for Kueue to admit it again, with
the timeout in its message. A gang that had run and then lost its pods' readiness (the timeout's
recoveryTimeout) did train: that eviction is a restart like the others.

A deactivated Workload (spec.active false: by hand, by a maximum execution time, or after
backoffLimitCount) is never replaced either: replacing it would undo the deactivation. The job
waits, saying so, until someone sets the Workload's spec.active back to true.
"""

from __future__ import annotations

import re

from forgeline.operator.policies.pods import Obj, condition, deleting
from forgeline.operator.policies.restart import RestartDecision

API_VERSION = "kueue.x-k8s.io/v1beta2"
WORKLOAD_JOB_UID = "kueue.x-k8s.io/job-uid"  # Kueue's label on a Job's Workload: the Job's uid
PODS_READY_TIMEOUT = "PodsReadyTimeout"
MAX_MESSAGE = 512  # of Kueue's text in a condition (it lists every pod set and flavor it tried)
_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")  # metav1.Condition's reason


def workload_of(workloads: list[Obj], job_uid: str) -> Obj | None:
    """The Workload of the Job with `job_uid` among those listed by its label (owned by it)."""
    for workload in workloads:
        refs = (workload.get("metadata") or {}).get("ownerReferences") or []
        if not deleting(workload) and any(r.get("uid") == job_uid for r in refs):
            return workload
    return None


def _condition(workload: Obj, type_: str, status: str) -> Obj | None:
    found = condition(workload, type_)
    return found if found is not None and found.get("status") == status else None


def _active(workload: Obj) -> bool:
    return (workload.get("spec") or {}).get("active") is not False


def _cap(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def waiting_message(workload: Obj | None) -> str:
    """Kueue's reason for not running the Job (now), or "" when its Workload says nothing yet."""
    if workload is None:
        return ""
    parts = []
    evicted = _condition(workload, "Evicted", "True")
    if evicted is not None:
        parts.append(f"evicted by Kueue ({evicted.get('reason')}): {evicted.get('message') or ''}".rstrip(": "))
    if (quota := _condition(workload, "QuotaReserved", "False")) is not None:
        if quota.get("message") and (evicted is None or quota["message"] != evicted.get("message")):
            parts.append(str(quota["message"]))
    elif (admitted := _condition(workload, "Admitted", "False")) is not None and admitted.get("message"):
        parts.append(str(admitted["message"]))  # quota reserved, admission checks pending
    requeue_at = ((workload.get("status") or {}).get("requeueState") or {}).get("requeueAt")
    if requeue_at and _condition(workload, "Requeued", "False") is not None:
        parts.append(f"Kueue requeues it at {requeue_at}")
    if not _active(workload):
        name = (workload.get("metadata") or {}).get("name", "?")
        parts.append(f"Workload {name} is deactivated; set its spec.active to true to queue it again")
    return _cap("; ".join(parts))


def eviction(workload: Obj | None, job_name: str, *, ran: bool) -> RestartDecision | None:
    """A restart (not counted) when Kueue took back the attempt of Job `job_name`; `ran`: every
    pod of the attempt was running at some point (its Running condition is True)."""
    evicted = _condition(workload, "Evicted", "True") if workload is not None else None
    if workload is None or evicted is None or not _active(workload):
        return None
    reason = str(evicted.get("reason") or "")
    if reason == PODS_READY_TIMEOUT and not ran:
        return None  # requeued by Kueue, with its back-off: see the module docstring
    detail = str(evicted.get("message") or "")
    how = "preempted by Kueue" if reason == "Preempted" else f"evicted by Kueue ({reason or 'no reason'})"
    message = f"Job {job_name} was {how}: {detail}" if detail else f"Job {job_name} was {how}"
    return RestartDecision(
        "restart",
        False,
        reason if _REASON.match(reason) else "EvictedByKueue",
        _cap(message) + "; restarting from the latest checkpoint (not counted)",
    )
