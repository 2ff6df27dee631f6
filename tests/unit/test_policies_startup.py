"""startupDeadlineSeconds and the pod-level cause, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from forgeline.operator.policies.startup import check_startup

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def running(i: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"p-{i}", "annotations": {"batch.kubernetes.io/job-completion-index": str(i)}},
        "status": {"phase": "Running"},
    }


def unschedulable(i: int) -> dict[str, Any]:
    message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available"
    return {
        "metadata": {"name": f"p-{i}", "annotations": {"batch.kubernetes.io/job-completion-index": str(i)}},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}],
        },
    }


def waiting(i: int, reason: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"p-{i}"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "trainer", "state": {"waiting": {"reason": reason, "message": f"{reason} details"}}}
            ],
        },
    }


def pending(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"p-{i}"}, "status": {"phase": "Pending"}}


@pytest.mark.parametrize(
    ("pods", "elapsed", "started", "exceeded", "reason"),
    [
        ([running(0), running(1)], 999, True, False, None),
        ([running(0), pending(1)], 5, False, False, "PodsStarting"),
        ([running(0), unschedulable(1)], 5, False, False, "Unschedulable"),
        ([running(0), unschedulable(1)], 10, False, True, "Unschedulable"),
        ([waiting(0, "ImagePullBackOff")], 11, False, True, "ImagePullBackOff"),
        ([waiting(0, "CreateContainerConfigError")], 11, False, True, "CreateContainerConfigError"),
        ([waiting(0, "ContainerCreating")], 11, False, True, "StartupDeadlineExceeded"),
        ([pending(0)], 11, False, True, "StartupDeadlineExceeded"),
        ([], 11, False, True, "StartupDeadlineExceeded"),
    ],
)
def test_startup_deadline(pods: list[Any], elapsed: int, started: bool, exceeded: bool, reason: str | None) -> None:
    nodes = max(len(pods), 1) if pods else 2
    verdict = check_startup(pods, nodes, T0, T0 + timedelta(seconds=elapsed), deadline_seconds=10)
    assert verdict.started is started
    assert (verdict.exceeded is not None) is exceeded
    got = verdict.exceeded.reason if verdict.exceeded else (verdict.waiting.reason if verdict.waiting else None)
    assert got == reason


def test_unschedulable_message_is_the_schedulers() -> None:
    verdict = check_startup([unschedulable(0)], 1, T0, T0 + timedelta(seconds=30), deadline_seconds=10)
    assert verdict.exceeded is not None
    assert "0/4 nodes are available: 4 Insufficient nvidia.com/gpu" in verdict.exceeded.message
    assert "pod p-0" in verdict.exceeded.message
    assert "startupDeadlineSeconds (10s)" in verdict.exceeded.message


def test_seconds_left_until_the_deadline() -> None:
    verdict = check_startup([pending(0)], 1, T0, T0 + timedelta(seconds=4), deadline_seconds=10)
    assert verdict.seconds_left == pytest.approx(6)


def test_a_job_waiting_for_admission_is_not_late() -> None:
    verdict = check_startup([], 2, None, T0 + timedelta(days=3), deadline_seconds=10)
    assert verdict.exceeded is None and verdict.seconds_left is None


def test_pods_being_deleted_do_not_count_as_started() -> None:
    gone = running(1)
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not check_startup([running(0), gone], 2, T0, T0, 10).started
