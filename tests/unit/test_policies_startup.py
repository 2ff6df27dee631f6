"""startupDeadlineSeconds and the pod-level cause, table-driven."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from testbed.builders import T0, pod

from forgeline.operator.policies.startup import check_startup

NO_GPU = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available"


@pytest.mark.parametrize(
    ("pods", "elapsed", "started", "exceeded", "reason"),
    [
        ([pod(0), pod(1)], 999, True, False, None),
        ([pod(0), pod(1, "Pending")], 5, False, False, "PodsStarting"),
        ([pod(0), pod(1, "Pending", unschedulable=NO_GPU)], 5, False, False, "Unschedulable"),
        ([pod(0), pod(1, "Pending", unschedulable=NO_GPU)], 10, False, True, "Unschedulable"),
        ([pod(0, "Pending", waiting="ImagePullBackOff")], 11, False, True, "ImagePullBackOff"),
        ([pod(0, "Pending", waiting="CreateContainerConfigError")], 11, False, True, "CreateContainerConfigError"),
        ([pod(0, "Pending", waiting="ContainerCreating")], 11, False, True, "StartupDeadlineExceeded"),
        ([pod(0, "Pending")], 11, False, True, "StartupDeadlineExceeded"),
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
    stuck = pod(0, "Pending", unschedulable=NO_GPU)
    verdict = check_startup([stuck], 1, T0, T0 + timedelta(seconds=30), deadline_seconds=10)
    assert verdict.exceeded is not None
    assert "0/4 nodes are available: 4 Insufficient nvidia.com/gpu" in verdict.exceeded.message
    assert f"pod {stuck['metadata']['name']}" in verdict.exceeded.message
    assert "startupDeadlineSeconds (10s)" in verdict.exceeded.message


def test_a_gang_names_the_pod_the_scheduler_could_not_place_not_those_waiting_for_it() -> None:
    held = "pod group is unschedulable, waiting for minCount pods from a gang to be scheduled"
    pods = [pod(0, "Pending", unschedulable=held), pod(1, "Pending", unschedulable=NO_GPU)]
    pods.append(pod(2, "Pending", unschedulable=held))
    verdict = check_startup(pods, 3, T0, T0 + timedelta(seconds=11), deadline_seconds=10)
    assert verdict.exceeded is not None and verdict.exceeded.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in verdict.exceeded.message and "-1-abcde" in verdict.exceeded.message


def test_a_gang_with_every_pod_held_still_says_it_waits_for_its_group() -> None:
    held = "pod group is unschedulable, waiting for minCount pods from a gang to be scheduled"
    verdict = check_startup([pod(0, "Pending", unschedulable=held)], 2, T0, T0 + timedelta(seconds=1), 10)
    assert verdict.waiting is not None and held in verdict.waiting.message


def test_seconds_left_until_the_deadline() -> None:
    verdict = check_startup([pod(0, "Pending")], 1, T0, T0 + timedelta(seconds=4), deadline_seconds=10)
    assert verdict.seconds_left == pytest.approx(6)


def test_a_job_waiting_for_admission_is_not_late() -> None:
    verdict = check_startup([], 2, None, T0 + timedelta(days=3), deadline_seconds=10)
    assert verdict.exceeded is None and verdict.seconds_left is None


def test_pods_being_deleted_do_not_count_as_started() -> None:
    gone = pod(1, deleting=True)
    assert not check_startup([pod(0), gone], 2, T0, T0, 10).started
