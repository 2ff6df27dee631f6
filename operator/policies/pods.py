"""Reading pods and batch Jobs (plain dicts, as the API returns them): pure helpers the
policies share. The pod-level cause is what makes a condition useful: not "Failed" but
"pod x-0: OOMKilled (exit 137)" or "0/4 nodes are available: 4 Insufficient nvidia.com/gpu".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

# Container waiting reasons that will not fix themselves within a startup deadline.
STUCK_WAITING = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
)
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"  # the Job controller's label on its pods: its uid


@dataclass(frozen=True)
class Cause:
    """Why a pod is where it is: a CamelCase reason and a message naming the pod."""

    reason: str
    message: str


def name_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "Pending")


def rank(pod: Obj) -> int | None:
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(COMPLETION_INDEX) or (meta.get("labels") or {}).get(COMPLETION_INDEX)
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        return None


def controller_uid(pod: Obj) -> str | None:
    """The uid of the batch Job that made the pod (None on a pod the Job controller did not make)."""
    return ((pod.get("metadata") or {}).get("labels") or {}).get(CONTROLLER_UID)


def deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _conditions(obj: Obj) -> list[Obj]:
    return list((obj.get("status") or {}).get("conditions") or [])


def condition(obj: Obj, type_: str) -> Obj | None:
    return next((c for c in _conditions(obj) if c.get("type") == type_), None)


def disrupted(pod: Obj) -> bool:
    """Evicted, preempted or drained: the DisruptionTarget condition the API server sets."""
    found = condition(pod, "DisruptionTarget")
    return found is not None and found.get("status") == "True"


def terminated(pod: Obj) -> Obj | None:
    """The terminated state of the first container that has one (the trainer container)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated")
        if state:
            return dict(state)
    return None


def exit_code(pod: Obj) -> int | None:
    state = terminated(pod)
    return None if state is None else int(state.get("exitCode", 0))


def termination_message(pod: Obj) -> str:
    state = terminated(pod) or {}
    return str(state.get("message") or "").strip()


def active(pod: Obj) -> bool:
    return phase(pod) in ("Pending", "Running", "Unknown") and not deleting(pod)


def running(pod: Obj) -> bool:
    return phase(pod) == "Running"


def failure_cause(pod: Obj) -> Cause:
    """A failed pod's cause: the kubelet's reason (OOMKilled, Error, Evicted...), the exit code
    and the termination message (the stage writes its error there; else the log tail)."""
    name = name_of(pod)
    state = terminated(pod) or {}
    status = pod.get("status") or {}
    if disrupted(pod):
        cond = condition(pod, "DisruptionTarget") or {}
        reason = str(cond.get("reason") or status.get("reason") or "Evicted")
        detail = str(cond.get("message") or status.get("message") or "")
        return Cause("Evicted", f"pod {name} was disrupted ({reason}){': ' + detail if detail else ''}")
    code = state.get("exitCode")
    reason = str(state.get("reason") or status.get("reason") or "Error")
    message = _summary(str(state.get("message") or status.get("message") or ""))
    text = f"pod {name}: {reason}" + (f" (exit {code})" if code is not None else "")
    return Cause(_camel(reason), text + (f": {message}" if message else ""))


def pending_cause(pod: Obj) -> Cause | None:
    """Why a pod is not Running yet, if the pod says: unschedulable, image pull, bad config."""
    name = name_of(pod)
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in STUCK_WAITING:
            detail = waiting.get("message") or ""
            return Cause(str(reason), f"pod {name}: {reason}" + (f": {detail}" if detail else ""))
    scheduled = condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        reason = str(scheduled.get("reason") or "Unschedulable")
        detail = scheduled.get("message") or ""
        return Cause(_camel(reason), f"pod {name}: {reason}" + (f": {detail}" if detail else ""))
    return None


def _summary(message: str) -> str:
    """The termination message is either our JSON ({"error": ...}) or a log tail."""
    import json

    try:
        body = json.loads(message)
    except ValueError:
        lines = [line for line in message.splitlines() if line.strip()]
        return " | ".join(lines[-3:])[:500]
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])[:500]
    return ""


def _camel(reason: str) -> str:
    cleaned = "".join(ch for ch in reason if ch.isalnum())
    return cleaned if cleaned and cleaned[0].isalpha() else "Error"


def job_condition(child: Obj, type_: str) -> Obj | None:
    found = condition(child, type_)
    return found if found is not None and found.get("status") == "True" else None
