"""metav1.Condition lists, pure: the Python twin of apimachinery's meta.SetStatusCondition.

kopf has no condition helpers. The rule that matters: lastTransitionTime moves only when the
status flips, so `kubectl describe` says since when a job has been Running, not when the operator
last looked. Conditions are plain wire dicts (camelCase), as they sit in status.
"""

from __future__ import annotations

from typing import Any

from forgeline.api.kinds import CONDITION_TYPES

Condition = dict[str, Any]

MAX_MESSAGE = 1024  # messages go into Events too, which the API server truncates


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    found = find_condition(conditions, type_)
    return found is not None and found.get("status") == "True"


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: str,
    reason: str,
    message: str = "",
    *,
    now: str,
    generation: int | None = None,
) -> tuple[list[Condition], bool]:
    """A new list with `type_` set; returns (list, transitioned), the latter when status flipped.

    The list keeps the order of CONDITION_TYPES, so a status written twice is byte-identical.
    """
    if type_ not in CONDITION_TYPES:
        raise ValueError(f"unknown condition type {type_!r}; one of {CONDITION_TYPES}")
    old = find_condition(conditions, type_)
    transitioned = old is None or old.get("status") != status
    new: Condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "lastTransitionTime": now if transitioned or old is None else old.get("lastTransitionTime", now),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    others = [c for c in conditions if c.get("type") != type_]
    merged = [*others, new]
    merged.sort(key=lambda c: CONDITION_TYPES.index(c["type"]) if c.get("type") in CONDITION_TYPES else 99)
    return merged, transitioned


def remove_condition(conditions: list[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.get("type") != type_]
