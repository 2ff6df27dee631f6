"""Restart policy, table-driven: which attempt outcomes restart the gang, fail the job, or cost nothing."""

from __future__ import annotations

from typing import Any

import pytest
from testbed.builders import batch_job, pod

from forgeline.jobs.errors import EXIT_BAD_CONFIG, EXIT_MISSING_INPUT
from forgeline.operator.policies.restart import AttemptOutcome, classify_attempt, decide_restart


@pytest.mark.parametrize(
    ("child", "pods", "state", "reason"),
    [
        (batch_job(), [pod(0), pod(1)], "running", "AllPodsRunning"),
        (batch_job(), [pod(0), pod(1, "Pending")], "starting", ""),
        (batch_job(), [pod(0)], "starting", ""),
        (
            batch_job(conditions=[("Complete", "Completed")]),
            [pod(0, "Succeeded", exit_code=0)],
            "succeeded",
            "Completed",
        ),
        (batch_job(), [pod(0), pod(1, "Failed", exit_code=137, reason="OOMKilled")], "retryable", "OOMKilled"),
        (batch_job(), [pod(0), pod(1, "Failed", exit_code=EXIT_BAD_CONFIG)], "permanent", "InvalidConfig"),
        (batch_job(), [pod(0, "Failed", exit_code=EXIT_MISSING_INPUT)], "permanent", "MissingInput"),
        (batch_job(), [pod(0), pod(1, "Failed", exit_code=143, disrupted=True)], "evicted", "Evicted"),
        (batch_job(conditions=[("Failed", "PodFailurePolicy")]), [], "permanent", "PodFailurePolicy"),
        (batch_job(conditions=[("Failed", "DeadlineExceeded")]), [], "retryable", "DeadlineExceeded"),
    ],
)
def test_classify_attempt(child: Any, pods: list[Any], state: str, reason: str) -> None:
    outcome = classify_attempt(child, pods, nodes=2)
    assert (outcome.state, outcome.reason) == (state, reason)


def test_earliest_failure_is_the_cause_not_its_echo() -> None:
    pods = [
        pod(0, "Failed", exit_code=1, reason="Error", message="NCCL timeout", finished_at="2026-01-01T00:00:30Z"),
        pod(3, "Failed", exit_code=137, reason="OOMKilled", finished_at="2026-01-01T00:00:05Z"),
    ]
    outcome = classify_attempt(batch_job(), pods, nodes=4)
    assert outcome.reason == "OOMKilled"
    assert "base-pretrain-a1-3" in outcome.message and "exit 137" in outcome.message


def test_permanent_exit_wins_over_a_peer_failure() -> None:
    pods = [
        pod(0, "Failed", exit_code=1, finished_at="2026-01-01T00:00:01Z"),
        pod(1, "Failed", exit_code=EXIT_BAD_CONFIG, message='{"error": "bad config: field x"}'),
    ]
    outcome = classify_attempt(batch_job(), pods, nodes=2)
    assert outcome.state == "permanent"
    assert "bad config: field x" in outcome.message


def test_eviction_wins_over_the_failures_it_caused() -> None:
    pods = [
        pod(0, "Failed", exit_code=1, finished_at="2026-01-01T00:00:01Z"),
        pod(1, "Failed", exit_code=143, disrupted=True),
    ]
    assert classify_attempt(batch_job(), pods, nodes=2).state == "evicted"


def test_the_termination_message_log_tail_reaches_the_message() -> None:
    failed = pod(0, "Failed", exit_code=1, message="line 1\nTraceback\nRuntimeError: CUDA error: out of memory\n")
    outcome = classify_attempt(batch_job(), [failed], nodes=1)
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
