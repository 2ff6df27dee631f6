"""The lifecycle through Reconciler with an in-memory port: plain dicts, no cluster.

The same scenarios run on the real control plane in tests/operator/; these pin the exact status,
conditions and Events of each transition and run in milliseconds.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from testbed.builders import T0, job, lora, observed, pretrain
from testbed.fakecluster import FakeCluster, Harness

from forgeline.api import torchrun
from forgeline.jobs.errors import EXIT_BAD_CONFIG
from forgeline.operator.decide import decide
from forgeline.operator.progress import parse_progress
from forgeline.operator.reconcile import Reconciler
from forgeline.operator.render import KUEUE_QUEUE_LABEL, RenderSettings


def test_first_pass_creates_attempt_one_and_status() -> None:
    h = Harness(pretrain())
    h.run()
    assert h.cluster.applied == ["ConfigMap/base-pretrain-a1", "Service/base-pretrain-a1", "Job/base-pretrain-a1"]
    status = h.status()
    assert status["state"] == "Created" and status["attempt"] == 1 and status["observedGeneration"] == 1
    assert h.condition("Created")["status"] == "True"
    assert h.condition("InputsReady")["reason"] == "InputsResolved"
    assert "Created" in h.cluster.events[-1][2] or "AttemptCreated" in h.reasons()


def test_with_gang_scheduling_the_pod_group_comes_and_goes_with_its_attempt() -> None:
    h = Harness(pretrain(nodes=3))
    h.reconciler.settings = replace(h.reconciler.settings, gang_scheduling=True)
    h.run()
    assert h.cluster.applied == [
        "ConfigMap/base-pretrain-a1",
        "Service/base-pretrain-a1",
        "PodGroup/base-pretrain-a1",
        "Job/base-pretrain-a1",
    ]
    h.cluster.make_pods(1)
    h.cluster.fail_pod(1, 0, 1, message="RuntimeError: NCCL timeout")
    h.run()
    groups = [k for k in h.cluster.objects if k[0] == "PodGroup"]
    assert groups == [("PodGroup", "default", "base-pretrain-a2")], "attempt 1's group went with its Job"


def test_a_finished_job_is_counted_once_on_the_transition_and_not_after_an_operator_restart() -> None:
    finished: list[tuple[str, str]] = []
    h = Harness(pretrain())
    h.reconciler.on_finished = lambda kind, result: finished.append((kind, result))
    h.run()
    h.cluster.make_pods(1)
    h.run()
    assert finished == []
    h.cluster.fail_pod(1, 0, EXIT_BAD_CONFIG, message="bad config")
    h.run()
    h.run()
    assert finished == [("PretrainJob", "Failed")]
    restarted = Reconciler(h.cluster, h.reconciler.settings, clock=lambda: h.now, on_finished=h.reconciler.on_finished)
    restarted.reconcile("PretrainJob", "default", "base")
    assert finished == [("PretrainJob", "Failed")], "already Failed when this process first saw it"


def test_status_is_written_only_when_it_changes() -> None:
    h = Harness(pretrain())
    h.run()
    h.cluster.make_pods(1)
    h.run()
    writes = h.cluster.status_writes
    events = len(h.cluster.events)
    for _ in range(3):
        h.run()
    assert h.cluster.status_writes == writes
    assert len(h.cluster.events) == events


def test_all_pods_running_makes_the_job_running_with_replica_counts() -> None:
    h = Harness(pretrain(nodes=4))
    h.run()
    h.cluster.make_pods(1, "Pending")
    h.run()
    assert h.status()["replicas"] == {"pending": 4, "running": 0, "succeeded": 0, "failed": 0}
    h.cluster.make_pods(1, "Running")
    h.run()
    assert h.status()["state"] == "Running"
    assert h.status()["replicas"]["running"] == 4
    assert h.condition("Running")["reason"] == "AllPodsRunning"
    assert "AllPodsRunning" in h.reasons()


def test_retryable_failure_restarts_whole_gang_as_next_attempt() -> None:
    h = Harness(pretrain())
    h.run()
    h.cluster.make_pods(1)
    h.run()
    h.cluster.fail_pod(1, 1, 137, reason="OOMKilled")
    h.run()
    status = h.status()
    assert status["attempt"] == 2 and status["restarts"] == 1 and status["state"] == "Restarting"
    assert h.cluster.job_of(1) is None, "the old gang is deleted, pods and all"
    assert h.cluster.job_of(2) is not None
    assert h.condition("Restarting")["reason"] == "OOMKilled"
    assert "exit 137" in h.condition("Restarting")["message"]
    assert ("Warning", "OOMKilled") in [(t, r) for t, r, _ in h.cluster.events]
    h.cluster.make_pods(2)
    h.run()
    assert h.status()["state"] == "Running"
    assert h.condition("Restarting")["status"] == "False"


def test_restart_uses_a_new_rendezvous_id() -> None:
    h = Harness(pretrain())
    h.run()

    def rdzv_id(attempt: int) -> str | None:
        job = h.cluster.job_of(attempt)
        assert job is not None
        env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        return env[torchrun.PET_RDZV_ID]

    first = rdzv_id(1)
    h.cluster.make_pods(1)
    h.cluster.fail_pod(1, 0, 1)
    h.run()
    assert (first, rdzv_id(2)) == ("uid-base-1", "uid-base-2")


def test_backoff_limit_exhausted_fails_with_the_last_cause() -> None:
    h = Harness(pretrain(backoffLimit=1))
    h.run()
    for attempt in (1, 2):
        h.cluster.make_pods(attempt)
        h.cluster.fail_pod(attempt, 0, 1, message="RuntimeError: NCCL timeout")
        h.run()
    status = h.status()
    assert status["state"] == "Failed" and status["restarts"] == 1 and status["attempt"] == 2
    failed = h.condition("Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "NCCL timeout" in failed["message"]
    assert h.cluster.job_of(2) is None, "after Failed no pod keeps running"
    assert "completionTime" in status


def test_permanent_exit_fails_at_once_without_retry() -> None:
    h = Harness(pretrain())
    h.run()
    h.cluster.make_pods(1)
    result = {"error": "bad config: field 'training.batch_size': must be >= 1", "exit_code": EXIT_BAD_CONFIG}
    h.cluster.fail_pod(1, 0, EXIT_BAD_CONFIG, message=json.dumps(result))
    h.run()
    status = h.status()
    assert status["state"] == "Failed" and status["restarts"] == 0 and status["attempt"] == 1
    assert h.condition("Failed")["reason"] == "InvalidConfig"
    assert "training.batch_size" in h.condition("Failed")["message"]


def test_eviction_restarts_without_using_the_budget() -> None:
    h = Harness(pretrain(backoffLimit=0))
    h.run()
    h.cluster.make_pods(1)
    h.cluster.fail_pod(1, 1, 143, disrupted=True)
    h.run()
    status = h.status()
    assert status["attempt"] == 2 and status["restarts"] == 0 and status["evictions"] == 1
    assert h.condition("Restarting")["reason"] == "Evicted"


def test_success_records_output_and_digest_from_rank_zero() -> None:
    h = Harness(pretrain(ttlSecondsAfterFinished=30))
    h.run()
    h.cluster.make_pods(1)
    h.run()
    h.cluster.complete(
        1,
        '{"output_uri": "s3://store/default/pretrainjob/base", "manifest_sha256": "'
        + "e" * 64
        + '", "metrics": {"final_loss": 1.5}}',
    )
    again = h.run()
    status = h.status()
    assert status["state"] == "Succeeded"
    assert status["output"] == {
        "uri": "s3://store/default/pretrainjob/base",
        "digest": "sha256:" + "e" * 64,
        "metrics": {"final_loss": 1.5},
    }
    assert h.condition("Running")["status"] == "False"
    assert again == 30
    h.tick(31)
    h.run()
    assert h.cluster.get("PretrainJob", "default", "base") is None, "TTL deleted the job object"


def test_unschedulable_gang_fails_after_the_startup_deadline_with_the_schedulers_message() -> None:
    h = Harness(pretrain(startupDeadlineSeconds=10))
    h.run()
    unschedulable = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
    h.cluster.set_pod(1, 0, "Pending", unschedulable=unschedulable)
    h.cluster.set_pod(1, 1, "Pending", unschedulable=unschedulable)
    h.tick(5)
    wait = h.run()
    assert h.status()["state"] == "Created"
    assert h.condition("Running")["reason"] == "Unschedulable"
    assert wait == pytest.approx(5)
    h.tick(6)
    h.run()
    failed = h.condition("Failed")
    assert failed["reason"] == "Unschedulable"
    assert "4 Insufficient nvidia.com/gpu" in failed["message"]
    assert h.cluster.job_of(1) is None


def test_suspend_deletes_pods_keeps_status_and_resume_starts_next_attempt() -> None:
    body = pretrain()
    h = Harness(body)
    h.run()
    h.cluster.make_pods(1)
    h.run()
    job = h.cluster.objects[("PretrainJob", "default", "base")]
    job["spec"]["runPolicy"]["suspend"] = True
    h.run()
    status = h.status()
    assert status["state"] == "Suspended" and status["attempt"] == 1
    assert h.cluster.job_of(1) is None
    assert h.condition("Suspended")["status"] == "True"
    h.run()
    assert h.cluster.job_of(2) is None, "stays suspended"
    job["spec"]["runPolicy"]["suspend"] = False
    h.run()
    status = h.status()
    assert status["attempt"] == 2 and status["restarts"] == 0
    assert h.condition("Suspended")["reason"] == "Resumed"
    assert h.cluster.job_of(2) is not None


def test_created_suspended_starts_nothing_until_resumed() -> None:
    h = Harness(pretrain(suspend=True))
    h.run()
    assert h.status()["state"] == "Suspended" and h.cluster.job_of(1) is None
    h.cluster.objects[("PretrainJob", "default", "base")]["spec"]["runPolicy"]["suspend"] = False
    h.run()
    assert h.status()["attempt"] == 1 and h.cluster.job_of(1) is not None


def test_active_deadline_fails_the_job() -> None:
    h = Harness(pretrain(activeDeadlineSeconds=60))
    h.run()
    h.cluster.make_pods(1)
    h.tick(61)
    h.run()
    assert h.condition("Failed")["reason"] == "DeadlineExceeded"
    assert h.cluster.job_of(1) is None


def test_a_lost_job_is_recreated_under_the_same_name_not_duplicated() -> None:
    h = Harness(pretrain())
    h.run()
    h.cluster.delete("batch/v1", "Job", "default", "base-pretrain-a1")
    h.run()
    h.run()
    jobs = [k for k in h.cluster.objects if k[0] == "Job"]
    assert jobs == [("Job", "default", "base-pretrain-a1")]
    assert h.status()["attempt"] == 1


def test_a_leftover_older_attempt_is_cleaned_up() -> None:
    h = Harness(pretrain())
    h.run()
    old = copy.deepcopy(h.cluster.job_of(1))
    h.cluster.make_pods(1)
    h.cluster.fail_pod(1, 0, 1)
    h.run()
    assert old is not None
    h.cluster.put(old)  # as if the delete had been lost
    h.run()
    assert h.cluster.job_of(1) is None and h.cluster.job_of(2) is not None


def test_downstream_waits_then_consumes_upstream_output_with_lineage() -> None:
    h = Harness(lora())
    h.run("tuned", "LoRAJob")
    assert h.status("tuned", "LoRAJob")["state"] == "Waiting"
    cond = next(c for c in h.status("tuned", "LoRAJob")["conditions"] if c["type"] == "InputsReady")
    assert cond["reason"] == "UpstreamMissing"
    h.cluster.put(pretrain())
    h.run()
    h.run("tuned", "LoRAJob")
    cond = next(c for c in h.status("tuned", "LoRAJob")["conditions"] if c["type"] == "InputsReady")
    assert cond["reason"] == "WaitingForUpstream"
    h.cluster.make_pods(1)
    h.run()
    h.cluster.complete(
        1, '{"output_uri": "s3://store/default/pretrainjob/base", "manifest_sha256": "' + "a" * 64 + '", "metrics": {}}'
    )
    h.run()
    h.run("tuned", "LoRAJob")
    status = h.status("tuned", "LoRAJob")
    assert status["attempt"] == 1
    assert status["inputs"] == [
        {
            "role": "model",
            "kind": "PretrainJob",
            "name": "base",
            "uri": "s3://store/default/pretrainjob/base",
            "digest": "sha256:" + "a" * 64,
        }
    ]
    config = h.cluster.get("ConfigMap", "default", "tuned-lora-a1")
    assert config is not None and "sha256:" + "a" * 64 in config["data"]["stage.json"]


def test_upstream_failure_is_reported_downstream() -> None:
    failed = pretrain()
    failed["status"] = {
        "state": "Failed",
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "OOMKilled",
                "message": "pod base-0 OOMKilled",
                "lastTransitionTime": "t",
            }
        ],
    }
    h = Harness(failed, lora())
    h.run("tuned", "LoRAJob")
    cond = next(c for c in h.status("tuned", "LoRAJob")["conditions"] if c["type"] == "InputsReady")
    assert cond["reason"] == "UpstreamFailed" and "pod base-0 OOMKilled" in cond["message"]
    assert ("Warning", "UpstreamFailed") in [(t, r) for t, r, _ in h.cluster.events]


def test_a_deleted_job_is_left_alone() -> None:
    h = Harness()
    assert h.run() is None


def test_progress_from_rank_zero_metrics() -> None:
    text = """# HELP forgeline_train_step Optimizer steps completed
forgeline_train_step{stage="pretrain"} 40.0
forgeline_train_total_steps{stage="pretrain"} 200.0
forgeline_train_loss{stage="pretrain"} 3.25
forgeline_train_tokens_total{stage="pretrain"} 81920.0
"""
    progress, sample = parse_progress(text, T0, None)
    assert progress == {
        "step": 40,
        "updated": "2026-01-01T00:00:00Z",
        "total": 200,
        "summary": "40/200 (20%)",
        "loss": 3.25,
    }
    assert sample[0] == 81920.0
    again, _ = parse_progress(text.replace("81920.0", "163840.0"), T0, (81920.0, sample[1] - 2.0))
    assert again["tokensPerSecond"] == pytest.approx(40960, rel=0.05)


def test_decide_is_pure() -> None:
    h = Harness(pretrain())
    h.run()
    body = h.cluster.get("PretrainJob", "default", "base")
    assert body is not None
    before = copy.deepcopy(body)
    snapshot = observed(body)
    plan1 = decide(job(body), snapshot, RenderSettings())
    plan2 = decide(job(body), snapshot, RenderSettings())
    assert snapshot.body == before
    assert body == before
    assert plan1.status == plan2.status and plan1.apply == plan2.apply


def test_progress_is_scraped_from_rank_zero_while_running() -> None:
    h = Harness(pretrain())
    scraped: list[str] = []

    def scrape(url: str) -> str:
        scraped.append(url)
        return 'forgeline_train_step{stage="pretrain"} 5.0\nforgeline_train_total_steps{stage="pretrain"} 10.0\n'

    h.cluster.scrape = scrape  # type: ignore[method-assign]
    h.run()
    h.cluster.make_pods(1)
    h.run()  # now Running
    h.run()  # scrapes rank 0
    assert scraped == ["http://10.0.0.0:9400/metrics"]
    assert h.status()["progress"]["summary"] == "5/10 (50%)"
    h.run()
    assert len(scraped) == 1, "at most one scrape every 15 s"


def test_a_kueue_job_waits_for_admission_without_a_startup_deadline() -> None:
    body = pretrain(startupDeadlineSeconds=5)
    body["metadata"]["labels"] = {KUEUE_QUEUE_LABEL: "gpu-queue"}
    h = Harness(body)
    h.run()
    job = h.cluster.job_of(1)
    assert job is not None and job["spec"]["suspend"] is True
    h.tick(3600)
    h.run()
    assert h.status()["state"] == "Created"
    running = h.condition("Running")
    assert running["reason"] == "WaitingForAdmission" and "gpu-queue" in running["message"]


def test_controller_starts_a_downstream_as_soon_as_its_upstream_succeeds() -> None:
    import time

    from prometheus_client import CollectorRegistry

    from forgeline.operator.controller import Controller
    from forgeline.operator.metrics import OperatorMetrics

    cluster = FakeCluster()
    controller = Controller(
        cluster, RenderSettings(), metrics=OperatorMetrics(CollectorRegistry()), workers=2, resync_seconds=3600
    )
    controller.start()

    def wait(check: Any) -> None:
        deadline = time.monotonic() + 5
        while not check():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.005)

    try:
        controller.job_changed(cluster.put(lora()))
        wait(lambda: (cluster.get("LoRAJob", "default", "tuned") or {}).get("status", {}).get("state") == "Waiting")
        base = pretrain()
        base["status"] = {
            "state": "Succeeded",
            "output": {"uri": "s3://store/base"},
            "completionTime": "2026-01-01T00:00:00Z",
        }
        controller.job_changed(cluster.put(base))
        wait(lambda: (cluster.get("LoRAJob", "default", "tuned") or {}).get("status", {}).get("attempt") == 1)
        metrics = controller.metrics
        assert metrics is not None
        # Observed once the pass has applied the children, a moment after its status write.
        wait(lambda: metrics.handoff.labels("LoRAJob")._sum.get() > 0)  # type: ignore[attr-defined]
    finally:
        controller.stop()


def test_a_running_gang_that_loses_a_pod_restarts_instead_of_hanging() -> None:
    h = Harness(pretrain(startupDeadlineSeconds=10, backoffLimit=0))
    h.run()
    h.cluster.make_pods(1)
    h.run()
    assert h.status()["state"] == "Running"
    h.tick(3600)  # long after the startup deadline
    del h.cluster.objects[("Pod", "default", "base-pretrain-a1-1-abcde")]
    h.run()
    status = h.status()
    assert status["state"] == "Restarting" and status["attempt"] == 2
    assert status["restarts"] == 0 and status["evictions"] == 1
    assert h.condition("Restarting")["reason"] == "PodLost"
