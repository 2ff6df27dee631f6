"""startupDeadlineSeconds: a gang that has not got every pod Running in time fails, naming why.

Pending pods are not failures to the Job controller (backoffLimit ignores them), which is how a
training job sits in ImagePullBackOff or Unschedulable forever in other operators. The deadline
starts when the attempt's Job starts (creation, or Kueue's admission of a suspended Job), so a job
waiting in a queue is not failed for waiting. The cause is the first pod-level one found: the
scheduler's message for Unschedulable, the kubelet's for ImagePullBackOff and friends; of a gang
(PodGroup), the pod the scheduler could not place rather than those waiting for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from forgeline.operator.policies.pods import Cause, Obj, active, deleting, pending_cause, phase, rank

# How the in-tree gang scheduler (KEP-4671) words PodScheduled=False on a pod waiting for its group.
GANG_WAIT = "waiting for minCount pods from a gang"


@dataclass(frozen=True)
class StartupVerdict:
    started: bool  # every pod is (or was) running
    exceeded: Cause | None  # set when the deadline passed first
    waiting: Cause | None  # the current pod-level reason, for the Running=False condition
    seconds_left: float | None


def check_startup(
    pods: list[Obj], nodes: int, started_at: datetime | None, now: datetime, deadline_seconds: int
) -> StartupVerdict:
    live = [p for p in pods if not deleting(p)]
    up = [p for p in live if phase(p) in ("Running", "Succeeded")]
    if len(up) >= nodes:
        return StartupVerdict(True, None, None, None)
    ordered = sorted((p for p in live if active(p)), key=lambda p: (rank(p) is None, rank(p) or 0))
    causes = [c for c in map(pending_cause, ordered) if c is not None]
    # A gang's pods held at the scheduler's Permit only say they wait for the rest of their group;
    # the one it could not place says why (Insufficient nvidia.com/gpu, a taint, ...): that one.
    waiting = next((c for c in causes if GANG_WAIT not in c.message), causes[0] if causes else None)
    if waiting is None:
        waiting = Cause("PodsStarting", f"{len(up)} of {nodes} pods running, {len(live)} created")
    if started_at is None:
        return StartupVerdict(False, None, waiting, None)
    left = deadline_seconds - (now - started_at).total_seconds()
    if left > 0:
        return StartupVerdict(False, None, waiting, left)
    exceeded = Cause(
        waiting.reason if waiting.reason != "PodsStarting" else "StartupDeadlineExceeded",
        f"{len(up)} of {nodes} pods running after startupDeadlineSeconds ({deadline_seconds}s); {waiting.message}",
    )
    return StartupVerdict(False, exceeded, waiting, 0.0)
