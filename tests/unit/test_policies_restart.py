"""Restart policy, table-driven: which attempt outcomes restart the gang, fail the job, or cost nothing."""

from __future__ import annotations

from typing import Any

import pytest

from forgeline.operator.policies.restart import AttemptOutcome, classify_attempt, decide_restart


def pod(
    index: int,
    phase: str = "Running",
    *,
    code: int | None = None,
    reason: str = "Error",
    message: str = "",
    finished: str = "2026-01-01T00:00:10Z",
    disrupted: bool = False,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if code is not None:
        status["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {
                    "terminated": {"exitCode": code, "reason": reason, "message": message, "finishedAt": finished}
                },
            }
        ]
    if disrupted:
        status["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"})
    return {
        "metadata": {
            "name": f"base-pretrain-a1-{index}-xyz",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": status,
    }


def job(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "base-pretrain-a1"},
        "status": {
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": f"{r} happened"} for t, r in conditions
            ]
        },
    }


@pytest.mark.parametrize(
    ("child", "pods", "state", "reason"),
    [
        (job(), [pod(0), pod(1)], "running", "AllPodsRunning"),
        (job(), [pod(0), pod(1, "Pending")], "starting", ""),
        (job(), [pod(0)], "starting", ""),
        (job(("Complete", "Completed")), [pod(0, "Succeeded", code=0)], "succeeded", "Completed"),
        (job(), [pod(0), pod(1, "Failed", code=137, reason="OOMKilled")], "retryable", "OOMKilled"),
        (job(), [pod(0), pod(1, "Failed", code=2)], "permanent", "InvalidConfig"),
        (job(), [pod(0, "Failed", code=3)], "permanent", "MissingInput"),
        (job(), [pod(0), pod(1, "Failed", code=143, disrupted=True)], "evicted", "Evicted"),
        (job(("Failed", "PodFailurePolicy")), [], "permanent", "PodFailurePolicy"),
        (job(("Failed", "DeadlineExceeded")), [], "retryable", "DeadlineExceeded"),
    ],
)
def test_classify_attempt(child: Any, pods: list[Any], state: str, reason: str) -> None:
    outcome = classify_attempt(child, pods, nodes=2)
    assert (outcome.state, outcome.reason) == (state, reason)


def test_earliest_failure_is_the_cause_not_its_echo() -> None:
    pods = [
        pod(0, "Failed", code=1, reason="Error", message="NCCL timeout", finished="2026-01-01T00:00:30Z"),
        pod(3, "Failed", code=137, reason="OOMKilled", finished="2026-01-01T00:00:05Z"),
    ]
    outcome = classify_attempt(job(), pods, nodes=4)
    assert outcome.reason == "OOMKilled"
    assert "base-pretrain-a1-3" in outcome.message and "exit 137" in outcome.message


def test_permanent_exit_wins_over_a_peer_failure() -> None:
    pods = [
        pod(0, "Failed", code=1, finished="2026-01-01T00:00:01Z"),
        pod(1, "Failed", code=2, message='{"error": "bad config: field x"}'),
    ]
    outcome = classify_attempt(job(), pods, nodes=2)
    assert outcome.state == "permanent"
    assert "bad config: field x" in outcome.message


def test_eviction_wins_over_the_failures_it_caused() -> None:
    pods = [pod(0, "Failed", code=1, finished="2026-01-01T00:00:01Z"), pod(1, "Failed", code=143, disrupted=True)]
    assert classify_attempt(job(), pods, nodes=2).state == "evicted"


def test_the_termination_message_log_tail_reaches_the_message() -> None:
    failed = pod(0, "Failed", code=1, message="line 1\nTraceback\nRuntimeError: CUDA error: out of memory\n")
    outcome = classify_attempt(job(), [failed], nodes=1)
    assert "RuntimeError: CUDA error: out of memory" in outcome.message


@pytest.mark.parametrize(
    ("state", "restarts", "limit", "action", "counted", "reason"),
    [
        ("retryable", 0, 3, "restart", True, "OOMKilled"),
        ("retryable", 2, 3, "restart", True, "OOMKilled"),
        ("retryable", 3, 3, "fail", False, "BackoffLimitExceeded"),
        ("retryable", 0, 0, "fail", False, "BackoffLimitExceeded"),
        ("evicted", 3, 3, "restart", False, "Evicted"),
        ("evicted", 0, 0, "restart", False, "Evicted"),
        ("permanent", 0, 3, "fail", False, "OOMKilled"),
    ],
)
def test_decide_restart(state: Any, restarts: int, limit: int, action: str, counted: bool, reason: str) -> None:
    decision = decide_restart(AttemptOutcome(state, "OOMKilled", "pod x: OOMKilled"), restarts, limit)
    assert decision is not None
    assert (decision.action, decision.counted, decision.reason) == (action, counted, reason)
    assert "pod x: OOMKilled" in decision.message


@pytest.mark.parametrize("state", ["starting", "running", "succeeded"])
def test_healthy_attempts_need_no_decision(state: Any) -> None:
    assert decide_restart(AttemptOutcome(state), 0, 3) is None


def test_a_lost_pod_restarts_without_using_the_budget() -> None:
    from forgeline.operator.policies.restart import gang_broken

    decision = gang_broken(3, "1 of 2 pods running")
    assert (decision.action, decision.counted, decision.reason) == ("restart", False, "PodLost")
    assert "attempt 3" in decision.message and "1 of 2 pods running" in decision.message
