"""decide(), driven directly: one Observed snapshot in, one Plan out; the real policies, no cluster.

Each test reaches its starting point by running decide() itself (the status one pass writes is
what the next pass reads), so no status is typed by hand, then states the one transition it is
about: what is applied, deleted, written to status, and said in Events.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from testbed import builders
from testbed.builders import (
    T0,
    Obj,
    completed,
    from_job,
    gang,
    job,
    job_body,
    lora,
    observed,
    pod_of,
    pretrain,
    stored,
    upstream_status,
    with_status,
)

from forgeline.api import torchrun
from forgeline.jobs.errors import EXIT_BAD_CONFIG, EXIT_MISSING_INPUT
from forgeline.operator.decide import PROGRESS_INTERVAL, Plan, decide
from forgeline.operator.policies.inputs import URI_RECHECK_SECONDS, UriCheck
from forgeline.operator.render import KUEUE_QUEUE_LABEL, RenderSettings

SETTINGS = RenderSettings(store="s3://store")
STARTUP_DEADLINE = 900  # spec.runPolicy.startupDeadlineSeconds' default
DIGEST = "sha256:" + "e" * 64


def decide_on(body: Obj, **snapshot: Any) -> Plan:
    """One pass over `body` and the snapshot's children, pods, upstreams and time."""
    return decide(job(body), observed(body, **snapshot), SETTINGS)


def applied(plan: Plan) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in plan.apply]


def deleted(plan: Plan) -> list[str]:
    return [f"{kind}/{name}" for _, kind, name in plan.delete]


def batch_of(plan: Plan) -> Obj:
    """The batch Job a pass applied, as the API server returns it once created (at T0)."""
    return stored(next(o for o in plan.apply if o["kind"] == "Job"))


def condition(plan: Plan, type_: str) -> Obj:
    return next(c for c in plan.status["conditions"] if c["type"] == type_)


def env_of(batch: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in batch["spec"]["template"]["spec"]["containers"][0]["env"]}


def attempt_of_names(attempt: int) -> list[str]:
    name = f"base-pretrain-a{attempt}"
    return [f"Job/{name}", f"Service/{name}", f"ConfigMap/{name}"]


def running(body: Obj, now: Any = T0) -> tuple[Obj, Obj]:
    """`body` after two passes: the first created attempt 1, the second saw all its pods Running.
    Returns the job object as the next pass reads it, and attempt 1's batch Job."""
    first = decide_on(body, now=now)
    child = batch_of(first)
    second = decide_on(with_status(body, first.status), children=[child], pods=gang(child), now=now)
    assert second.status["state"] == "Running", second.status
    return with_status(body, second.status), child


def fail_one(body: Obj, child: Obj, **failure: Any) -> Plan:
    """A pass that sees pod 1 of `child` Failed (`failure` as for builders.pod), pod 0 running."""
    pods = [pod_of(child, 0), pod_of(child, 1, "Failed", **failure)]
    return decide_on(body, children=[child], pods=pods)


# -- a fresh job ---------------------------------------------------------------------------------


def test_a_fresh_job_creates_attempt_one() -> None:
    plan = decide_on(pretrain())
    assert applied(plan) == ["ConfigMap/base-pretrain-a1", "Service/base-pretrain-a1", "Job/base-pretrain-a1"]
    assert plan.delete == [] and not plan.delete_self
    status = plan.status
    assert (status["state"], status["attempt"], status["restarts"], status["evictions"]) == ("Created", 1, 0, 0)
    assert status["observedGeneration"] == 1 and status["startTime"] == "2026-01-01T00:00:00Z"
    assert status["replicas"] == {"pending": 0, "running": 0, "succeeded": 0, "failed": 0}
    assert (condition(plan, "InputsReady")["status"], condition(plan, "Created")["reason"]) == (
        "True",
        "AttemptCreated",
    )
    assert ("Normal", "AttemptCreated") in [(t, r) for t, r, _ in plan.events]
    assert plan.requeue_after == STARTUP_DEADLINE, "looked at again by the startup deadline at the latest"


def test_the_same_snapshot_gives_the_same_plan_and_is_left_untouched() -> None:
    snapshot = observed(pretrain())
    before = json.dumps(snapshot.body, sort_keys=True)
    first, second = decide(job(snapshot.body), snapshot, SETTINGS), decide(job(snapshot.body), snapshot, SETTINGS)
    assert first == second
    assert json.dumps(snapshot.body, sort_keys=True) == before


# -- inputs --------------------------------------------------------------------------------------


FAILED_BASE = upstream_status(
    "Failed", conditions=[builders.condition("Failed", "OOMKilled", message="pod base-0 OOM")]
)


@pytest.mark.parametrize(
    ("body", "snapshot", "reason", "event", "requeue"),
    [
        (lora(), {"upstreams": {"model": None}}, "UpstreamMissing", "Warning", None),
        (lora(), {"upstreams": {"model": upstream_status("Running")}}, "WaitingForUpstream", "Normal", None),
        (lora(), {"upstreams": {"model": upstream_status("Succeeded")}}, "WaitingForUpstream", "Normal", None),
        (lora(), {"upstreams": {"model": FAILED_BASE}}, "UpstreamFailed", "Warning", None),
        (
            lora(model={"uri": "s3://models/base"}),
            {"uri_checks": {"model": UriCheck(False, message="no _MANIFEST.json")}},
            "InputManifestMissing",
            "Warning",
            URI_RECHECK_SECONDS,
        ),
        (
            lora("a", from_job("LoRAJob", "b")),
            {
                "upstreams": {"model": lora("b", from_job("LoRAJob", "a"))},
                "graph": [lora("b", from_job("LoRAJob", "a"))],
            },
            "ChainCycle",
            "Warning",
            None,
        ),
    ],
)
def test_inputs_not_ready_wait_with_the_reason(
    body: Obj, snapshot: dict[str, Any], reason: str, event: str, requeue: float | None
) -> None:
    plan = decide_on(body, **snapshot)
    assert plan.apply == [] and plan.status["state"] == "Waiting" and plan.status["attempt"] == 0
    inputs = condition(plan, "InputsReady")
    assert (inputs["status"], inputs["reason"]) == ("False", reason)
    assert [(t, r) for t, r, _ in plan.events] == [(event, reason)]
    assert plan.requeue_after == requeue


def test_ready_inputs_are_frozen_into_status_and_the_first_attempt_starts() -> None:
    done = upstream_status(
        "Succeeded",
        {"uri": "s3://store/default/pretrainjob/base", "digest": DIGEST},
        completionTime="2026-01-01T00:00:00Z",
    )
    plan = decide_on(lora(), upstreams={"model": done}, now=T0 + timedelta(seconds=2))
    assert plan.status["inputs"] == [
        {
            "role": "model",
            "kind": "PretrainJob",
            "name": "base",
            "uri": "s3://store/default/pretrainjob/base",
            "digest": DIGEST,
        }
    ]
    assert applied(plan)[-1] == "Job/tuned-lora-a1" and condition(plan, "InputsReady")["reason"] == "InputsResolved"
    config = json.loads(plan.apply[0]["data"]["stage.json"])
    assert config["model"]["digest"] == DIGEST, "the attempt reads the pinned artifact"
    assert plan.handoff_from == T0


def test_inputs_are_not_looked_at_again_once_an_attempt_exists() -> None:
    first = decide_on(lora(), upstreams={"model": upstream_status("Succeeded", {"uri": "s3://x"})})
    child = batch_of(first)
    later = decide_on(with_status(lora(), first.status), children=[child], pods=gang(child, "Pending"))
    assert later.status["inputs"] == first.status["inputs"] and later.status["state"] == "Created"


# -- a running gang: restart or fail -------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "state", "reason", "restarts", "evictions", "attempt"),
    [
        ({"exit_code": 137, "reason": "OOMKilled"}, "Restarting", "OOMKilled", 1, 0, 2),
        ({"exit_code": 1}, "Restarting", "Error", 1, 0, 2),
        ({"exit_code": EXIT_BAD_CONFIG}, "Failed", "InvalidConfig", 0, 0, 1),
        ({"exit_code": EXIT_MISSING_INPUT}, "Failed", "MissingInput", 0, 0, 1),
        ({"exit_code": 143, "disrupted": True}, "Restarting", "Evicted", 0, 1, 2),
    ],
)
def test_a_failed_pod_restarts_the_gang_or_fails_the_job(
    failure: dict[str, Any], state: str, reason: str, restarts: int, evictions: int, attempt: int
) -> None:
    body, child = running(pretrain())
    plan = fail_one(body, child, **failure)
    status = plan.status
    assert (status["state"], status["restarts"], status["evictions"], status["attempt"]) == (
        state,
        restarts,
        evictions,
        attempt,
    )
    assert condition(plan, "Restarting" if state == "Restarting" else "Failed")["reason"] == reason
    assert deleted(plan) == attempt_of_names(1), "the whole gang goes, never one pod"


def test_retryable_failure_restarts_whole_gang_as_next_attempt_with_a_new_rendezvous() -> None:
    body, child = running(pretrain())
    plan = fail_one(body, child, exit_code=137, reason="OOMKilled", message="CUDA out of memory")
    assert deleted(plan) == attempt_of_names(1)
    assert applied(plan) == ["ConfigMap/base-pretrain-a2", "Service/base-pretrain-a2", "Job/base-pretrain-a2"]
    old, new = env_of(child), env_of(batch_of(plan))
    assert (old[torchrun.PET_RDZV_ID], new[torchrun.PET_RDZV_ID]) == ("uid-base-1", "uid-base-2")
    assert new[torchrun.PET_MASTER_ADDR] == "base-pretrain-a2-0.base-pretrain-a2"
    restarting = condition(plan, "Restarting")
    assert restarting["status"] == "True" and "exit 137" in restarting["message"]
    assert "CUDA out of memory" in restarting["message"] and "restart 1 of 3" in restarting["message"]
    assert condition(plan, "Running")["reason"] == "Restarting"
    assert ("Warning", "OOMKilled") in [(t, r) for t, r, _ in plan.events]
    assert plan.restart_reason == "OOMKilled" and plan.requeue_after == STARTUP_DEADLINE


def test_the_restarted_gang_running_recovers() -> None:
    body, child = running(pretrain())
    restart = fail_one(body, child, exit_code=1)
    second = batch_of(restart)
    plan = decide_on(with_status(body, restart.status), children=[second], pods=gang(second))
    assert plan.status["state"] == "Running" and condition(plan, "Restarting")["reason"] == "Recovered"
    assert plan.requeue_after == PROGRESS_INTERVAL


@pytest.mark.parametrize("code", [EXIT_BAD_CONFIG, EXIT_MISSING_INPUT])
def test_a_permanent_exit_code_fails_at_once_with_budget_left(code: int) -> None:
    body, child = running(pretrain(backoffLimit=5))
    result = {"error": "bad config: field 'training.batchSize': must be >= 1", "exit_code": code}
    plan = fail_one(body, child, exit_code=code, message=json.dumps(result))
    assert plan.apply == [] and plan.status["restarts"] == 0
    failed = condition(plan, "Failed")
    assert "training.batchSize" in failed["message"] and "permanent: not retried" in failed["message"]
    assert plan.status["completionTime"] == "2026-01-01T00:00:00.000000Z"


def test_eviction_restarts_without_using_the_backoff_budget() -> None:
    body, child = running(pretrain(backoffLimit=0))
    plan = fail_one(body, child, exit_code=143, disrupted=True)
    assert (plan.status["restarts"], plan.status["evictions"], plan.status["attempt"]) == (0, 1, 2)
    assert "Job/base-pretrain-a2" in applied(plan)
    assert "not counted" in condition(plan, "Restarting")["message"]


def test_backoff_limit_exhausted_fails_with_the_last_cause() -> None:
    body, child = running(pretrain(backoffLimit=1))
    restart = fail_one(body, child, exit_code=1, message="RuntimeError: NCCL timeout")
    assert restart.status["restarts"] == 1
    body, second = with_status(body, restart.status), batch_of(restart)
    pods = [pod_of(second, 0), pod_of(second, 1, "Failed", exit_code=1, message="RuntimeError: NCCL timeout")]
    plan = decide_on(body, children=[second], pods=pods)
    assert (plan.status["state"], plan.status["restarts"], plan.status["attempt"]) == ("Failed", 1, 2)
    failed = condition(plan, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "NCCL timeout" in failed["message"]
    assert deleted(plan) == attempt_of_names(2), "pod 0 still runs: the gang is stopped"
    assert plan.apply == []


def test_a_running_gang_that_loses_a_pod_restarts_uncounted() -> None:
    body, child = running(pretrain(backoffLimit=0))
    plan = decide_on(body, children=[child], pods=[pod_of(child, 0)], now=T0 + timedelta(hours=1))
    assert (plan.status["state"], plan.status["attempt"], plan.status["evictions"]) == ("Restarting", 2, 1)
    assert condition(plan, "Restarting")["reason"] == "PodLost"


# -- success ---------------------------------------------------------------------------------------


def test_success_records_the_output_and_starts_the_ttl_clock() -> None:
    body, child = running(pretrain(ttlSecondsAfterFinished=30))
    uri = "s3://elsewhere/base"  # not the default: rank 0's result says where the output went
    result = {"output_uri": uri, "manifest_sha256": "e" * 64, "metrics": {"steps": 40}}
    pods = [pod_of(child, i, "Succeeded", exit_code=0, message=json.dumps(result) if i == 0 else "") for i in (0, 1)]
    plan = decide_on(body, children=[completed(child)], pods=pods, now=T0 + timedelta(minutes=5))
    status = plan.status
    assert status["state"] == "Succeeded" and condition(plan, "Succeeded")["reason"] == "Completed"
    assert status["output"] == {"uri": uri, "digest": DIGEST, "metrics": {"steps": 40.0}}
    assert status["progress"]["summary"] == "40/40 (100%)"
    assert status["completionTime"] == "2026-01-01T00:05:00.000000Z"
    assert condition(plan, "Running")["status"] == "False"
    assert plan.apply == [] and plan.delete == [] and plan.requeue_after == 30


@pytest.mark.parametrize(("after", "delete_self", "requeue"), [(10, False, 20.0), (30, True, None)])
def test_a_finished_job_waits_out_its_ttl_then_deletes_itself(
    after: int, delete_self: bool, requeue: float | None
) -> None:
    body, child = running(pretrain(ttlSecondsAfterFinished=30))
    done = decide_on(body, children=[completed(child)], pods=gang(child, "Succeeded", exit_code=0))
    plan = decide_on(with_status(body, done.status), now=T0 + timedelta(seconds=after))
    assert (plan.delete_self, plan.requeue_after) == (delete_self, requeue)
    assert plan.status == done.status, "a finished job's status does not move"


def test_a_failed_job_stops_pods_that_still_run() -> None:
    body, child = running(pretrain())
    failed = fail_one(body, child, exit_code=EXIT_BAD_CONFIG)
    plan = decide_on(with_status(body, failed.status), children=[child], pods=[pod_of(child, 0)])
    assert deleted(plan) == attempt_of_names(1) and plan.apply == []


# -- suspend ---------------------------------------------------------------------------------------


def suspended(body: Obj, flag: bool) -> Obj:
    out = json.loads(json.dumps(body))
    out["spec"]["runPolicy"]["suspend"] = flag
    return out


def test_a_job_created_suspended_starts_nothing() -> None:
    plan = decide_on(pretrain(suspend=True))
    assert plan.apply == [] and plan.status["state"] == "Suspended" and plan.status["attempt"] == 0
    assert condition(plan, "Suspended")["status"] == "True"


def test_suspend_deletes_the_gang_keeps_status_and_resume_starts_the_next_attempt() -> None:
    body, child = running(pretrain())
    plan = decide_on(suspended(body, True), children=[child], pods=gang(child))
    assert deleted(plan) == attempt_of_names(1) and plan.apply == []
    assert (plan.status["state"], plan.status["attempt"]) == ("Suspended", 1)
    assert condition(plan, "Running")["reason"] == "Suspended"
    again = decide_on(with_status(suspended(body, True), plan.status))
    assert again.apply == [] and again.delete == [], "stays suspended"
    resumed = decide_on(with_status(suspended(body, False), plan.status), now=T0 + timedelta(hours=1))
    assert applied(resumed)[-1] == "Job/base-pretrain-a2"
    assert (resumed.status["attempt"], resumed.status["restarts"], resumed.status["state"]) == (2, 0, "Created")
    assert condition(resumed, "Suspended")["reason"] == "Resumed"
    assert resumed.status["startTime"] == "2026-01-01T01:00:00Z", "the deadline clock restarts"


# -- deadlines -------------------------------------------------------------------------------------


def test_active_deadline_exceeded_fails_the_job_and_stops_the_gang() -> None:
    body, child = running(pretrain(activeDeadlineSeconds=60))
    plan = decide_on(body, children=[child], pods=gang(child), now=T0 + timedelta(seconds=61))
    assert plan.status["state"] == "Failed"
    failed = condition(plan, "Failed")
    assert failed["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds (60s)" in failed["message"]
    assert deleted(plan) == attempt_of_names(1)


def test_before_the_active_deadline_the_job_is_looked_at_by_then() -> None:
    body, child = running(pretrain(activeDeadlineSeconds=60))
    plan = decide_on(body, children=[child], pods=gang(child), now=T0 + timedelta(seconds=50))
    assert plan.status["state"] == "Running" and plan.requeue_after == 10


def test_a_gang_that_never_runs_fails_at_the_startup_deadline_with_the_cause() -> None:
    body = pretrain(startupDeadlineSeconds=10)
    first = decide_on(body)
    child, body = batch_of(first), with_status(body, first.status)
    stuck = gang(child, "Pending", unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    waiting = decide_on(body, children=[child], pods=stuck, now=T0 + timedelta(seconds=5))
    assert condition(waiting, "Running")["reason"] == "Unschedulable" and waiting.requeue_after == 5
    plan = decide_on(with_status(body, waiting.status), children=[child], pods=stuck, now=T0 + timedelta(seconds=11))
    failed = condition(plan, "Failed")
    assert failed["reason"] == "Unschedulable" and "4 Insufficient nvidia.com/gpu" in failed["message"]


def test_a_job_queued_in_kueue_waits_for_admission_without_a_startup_deadline() -> None:
    body = job_body(labels={KUEUE_QUEUE_LABEL: "gpu-queue"}, runPolicy={"startupDeadlineSeconds": 5})
    first = decide_on(body)
    child = batch_of(first)
    assert child["spec"]["suspend"] is True
    plan = decide_on(with_status(body, first.status), children=[child], now=T0 + timedelta(days=1))
    assert plan.status["state"] == "Created"
    assert condition(plan, "Running")["reason"] == "WaitingForAdmission" and plan.requeue_after is None


# -- leftovers -------------------------------------------------------------------------------------


def test_a_lost_job_is_rendered_again_under_the_same_name() -> None:
    first = decide_on(pretrain())
    plan = decide_on(with_status(pretrain(), first.status))
    assert applied(plan) == ["ConfigMap/base-pretrain-a1", "Service/base-pretrain-a1", "Job/base-pretrain-a1"]
    assert plan.status["attempt"] == 1


def test_an_earlier_attempt_left_behind_is_deleted() -> None:
    body, child = running(pretrain())
    restart = fail_one(body, child, exit_code=1)
    body, second = with_status(body, restart.status), batch_of(restart)
    plan = decide_on(body, children=[child, second], pods=gang(second))
    assert deleted(plan) == attempt_of_names(1) and plan.status["state"] == "Running"
