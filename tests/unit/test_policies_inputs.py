"""Chaining: inputs resolved from upstream status, or InputsReady False with the right reason."""

from __future__ import annotations

from typing import Any

import pytest
from testbed.builders import FROM_BASE, condition, from_job, job, rlhf, upstream_status

from forgeline.api.kinds import Job
from forgeline.api.stageconfig import ResolvedInput
from forgeline.operator.policies.inputs import frozen_inputs, resolve_inputs, upstream_keys

DIGEST = "sha256:" + "d" * 64


def aligned(policy: dict[str, Any], reward: dict[str, Any]) -> Job:
    """RLHFJob ml/aligned on these two inputs."""
    return job(rlhf(policy, reward, namespace="ml"))


FROM_JUDGE = from_job("RewardModelJob", "judge")
DONE = upstream_status("Succeeded", {"uri": "s3://s/base", "digest": DIGEST}, completionTime="2026-01-01T00:00:00Z")
DONE_JUDGE = upstream_status("Succeeded", {"uri": "s3://s/judge"})
FAILED = upstream_status(
    "Failed",
    conditions=[condition("Failed", "OOMKilled", message="pod base-0: OOMKilled")],
)


@pytest.mark.parametrize(
    ("policy", "reward", "ready", "reason"),
    [
        (DONE, DONE_JUDGE, True, "InputsResolved"),
        (upstream_status("Running", progress={"summary": "10/100 (10%)"}), DONE_JUDGE, False, "WaitingForUpstream"),
        (upstream_status("Succeeded"), DONE_JUDGE, False, "WaitingForUpstream"),  # no output recorded yet
        (None, DONE_JUDGE, False, "UpstreamMissing"),
        (FAILED, DONE_JUDGE, False, "UpstreamFailed"),
        (FAILED, None, False, "UpstreamFailed"),  # the worst reason wins
        (upstream_status("Running"), None, False, "UpstreamMissing"),
        (upstream_status(None), DONE_JUDGE, False, "WaitingForUpstream"),  # not even looked at yet
    ],
)
def test_inputs_ready_reason(policy: Any, reward: Any, ready: bool, reason: str) -> None:
    verdict = resolve_inputs(aligned(FROM_BASE, FROM_JUDGE), {"policy": policy, "rewardModel": reward})
    assert (verdict.ready, verdict.reason) == (ready, reason)


def test_messages_name_the_upstream_and_what_to_do() -> None:
    verdict = resolve_inputs(aligned(FROM_BASE, FROM_JUDGE), {"policy": FAILED, "rewardModel": None})
    assert "spec.rlhf.policy.fromJob: PretrainJob/base failed (pod base-0: OOMKilled)" in verdict.message
    assert "RewardModelJob/judge does not exist in namespace ml; create it" in verdict.message
    waiting = resolve_inputs(
        aligned(FROM_BASE, FROM_JUDGE),
        {"policy": upstream_status("Running", progress={"summary": "10/100 (10%)"}), "rewardModel": DONE_JUDGE},
    )
    assert "waiting for PretrainJob/base (state Running, 10/100 (10%))" in waiting.message


def test_resolved_inputs_carry_uri_digest_and_lineage() -> None:
    verdict = resolve_inputs(aligned(FROM_BASE, FROM_JUDGE), {"policy": DONE, "rewardModel": DONE_JUDGE})
    assert verdict.resolved == {
        "policy": ResolvedInput("s3://s/base", DIGEST),
        "rewardModel": ResolvedInput("s3://s/judge"),
    }
    assert verdict.records[0] == {
        "role": "policy",
        "kind": "PretrainJob",
        "name": "base",
        "uri": "s3://s/base",
        "digest": DIGEST,
    }
    assert verdict.upstream_completed == ["2026-01-01T00:00:00Z"]
    assert frozen_inputs(verdict.records) == verdict.resolved


def test_direct_uris_need_no_upstream() -> None:
    verdict = resolve_inputs(aligned({"uri": "s3://m/p"}, {"uri": "s3://m/r"}), {})
    assert verdict.ready
    assert verdict.records == [{"role": "policy", "uri": "s3://m/p"}, {"role": "rewardModel", "uri": "s3://m/r"}]


def test_upstream_keys_are_the_from_job_references() -> None:
    keys = upstream_keys(aligned(FROM_BASE, {"uri": "s3://m/r"}))
    assert {role: str(key) for role, key in keys.items()} == {"policy": "PretrainJob/base"}
