"""set_condition behaves like apimachinery's meta.SetStatusCondition."""

from __future__ import annotations

import pytest

from forgeline.operator.conditions import find_condition, is_true, set_condition


def test_transition_time_moves_only_when_status_flips() -> None:
    conds, flipped = set_condition([], "Running", "False", "PodsStarting", now="t1")
    assert flipped
    conds, flipped = set_condition(conds, "Running", "False", "Unschedulable", "0/4 nodes", now="t2")
    assert not flipped
    assert find_condition(conds, "Running") == {
        "type": "Running",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/4 nodes",
        "lastTransitionTime": "t1",
    }
    conds, flipped = set_condition(conds, "Running", "True", "AllPodsRunning", now="t3", generation=4)
    assert flipped and is_true(conds, "Running")
    assert find_condition(conds, "Running")["lastTransitionTime"] == "t3"  # type: ignore[index]
    assert find_condition(conds, "Running")["observedGeneration"] == 4  # type: ignore[index]


def test_list_order_is_stable_whatever_the_order_of_calls() -> None:
    a, _ = set_condition([], "Succeeded", "True", "Completed", now="t")
    a, _ = set_condition(a, "Created", "True", "AttemptCreated", now="t")
    b, _ = set_condition([], "Created", "True", "AttemptCreated", now="t")
    b, _ = set_condition(b, "Succeeded", "True", "Completed", now="t")
    assert a == b
    assert [c["type"] for c in a] == ["Created", "Succeeded"]


def test_unknown_types_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown condition type"):
        set_condition([], "Ready", "True", "X", now="t")


def test_long_messages_are_truncated() -> None:
    conds, _ = set_condition([], "Failed", "True", "Error", "x" * 5000, now="t")
    assert len(conds[0]["message"]) == 1024
