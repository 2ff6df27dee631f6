"""The operator's lifecycle on the real control plane: kube-scheduler places the gang on kwok GPU
nodes, the Job controller makes the pods, kwok plays them (Running, exit codes, evictions)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from testbed.kube import EXIT_CODE_ANNOTATION, OUTCOME_LABEL, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def env_of(pod: Any) -> dict[str, Any]:
    return {e.name: e.value if e.value is not None else e.value_from for e in pod.spec.containers[0].env}


def make_pod(jobs: Any, pod: Any, outcome: str, exit_code: int | None = None) -> None:
    annotations = {EXIT_CODE_ANNOTATION: str(exit_code)} if exit_code is not None else {}
    jobs.core.patch_namespaced_pod(pod.metadata.name, jobs.ns, {"metadata": {"annotations": annotations}})
    jobs.core.patch_namespaced_pod(pod.metadata.name, jobs.ns, {"metadata": {"labels": {OUTCOME_LABEL: outcome}}})


def rank(pod: Any) -> int:
    return int(pod.metadata.annotations["batch.kubernetes.io/job-completion-index"])


def test_four_node_gpu_job_is_one_indexed_job_with_the_env_contract(jobs: Any, manifest: Any, cond: Any) -> None:
    body = jobs.create(manifest("big", nodes=4, gpus=8))
    status = jobs.wait_state("big", "Running")
    assert status["attempt"] == 1 and status["replicas"]["running"] == 4
    assert cond(status, "Running")["reason"] == "AllPodsRunning"
    (job,) = jobs.batch_jobs("big")
    assert job.metadata.name == "big-pretrain-a1"
    assert job.spec.completion_mode == "Indexed" and job.spec.completions == 4 and job.spec.backoff_limit == 0
    pods = sorted(jobs.pods("big"), key=rank)
    assert [rank(p) for p in pods] == [0, 1, 2, 3]
    assert len({p.spec.node_name for p in pods}) == 4, "one pod per 8-GPU node"
    uid = body["metadata"]["uid"]
    for pod in pods:
        env = env_of(pod)
        assert env["PET_NNODES"] == "4"
        assert env["PET_NPROC_PER_NODE"] == "8"
        assert (
            env["PET_NODE_RANK"].field_ref.field_path
            == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        )
        assert env["PET_MASTER_ADDR"] == "big-pretrain-a1-0.big-pretrain-a1"
        assert env["PET_MASTER_PORT"] == "29500"
        assert env["PET_RDZV_ID"] == f"{uid}-1"
        assert pod.spec.hostname == f"big-pretrain-a1-{rank(pod)}" and pod.spec.subdomain == "big-pretrain-a1"
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "8"
        assert pod.spec.automount_service_account_token is False
        assert pod.metadata.owner_references[0].kind == "Job"
    svc = jobs.core.read_namespaced_service("big-pretrain-a1", jobs.ns)
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses is True

    # The DNS name torchrun dials (PET_MASTER_ADDR) is rank 0's endpoint with its hostname; the
    # other ranks are not in the Service, so their starts never rewrite its EndpointSlice.
    def endpoints() -> list[Any]:
        discovery = client.DiscoveryV1Api(jobs.core.api_client)
        slices = discovery.list_namespaced_endpoint_slice(
            jobs.ns, label_selector="kubernetes.io/service-name=big-pretrain-a1"
        ).items
        return [e for s in slices for e in s.endpoints or []]

    (endpoint,) = wait_for(endpoints, timeout=30, what="the Service's endpoint")
    assert endpoint.hostname == "big-pretrain-a1-0" and endpoint.target_ref.name == pods[0].metadata.name
    assert jobs.core.read_namespaced_config_map("big-pretrain-a1", jobs.ns).data["stage.json"]


def test_exit_137_restarts_the_whole_gang_with_a_new_rendezvous_id(jobs: Any, manifest: Any, cond: Any) -> None:
    jobs.create(manifest("oom", nodes=2))
    jobs.wait_state("oom", "Running")
    first = {p.metadata.name: env_of(p)["PET_RDZV_ID"] for p in jobs.pods("oom", attempt=1)}
    victim = next(p for p in jobs.pods("oom", attempt=1) if rank(p) == 1)
    make_pod(jobs, victim, "fail", 137)
    status = jobs.wait("oom", lambda s: s.get("attempt") == 2 and s.get("state") == "Running", what="attempt 2 Running")
    assert status["restarts"] == 1 and status.get("evictions", 0) == 0
    restarting = cond(status, "Restarting")
    assert restarting["status"] == "False" and restarting["reason"] == "Recovered"
    second = jobs.pods("oom", attempt=2)
    assert len(second) == 2
    new_ids = {env_of(p)["PET_RDZV_ID"] for p in second}
    assert len(new_ids) == 1 and new_ids.isdisjoint(first.values())
    wait_for(lambda: not jobs.pods("oom", attempt=1), timeout=30, what="the first gang to be gone")
    assert [j.metadata.name for j in jobs.batch_jobs("oom") if not j.metadata.deletion_timestamp] == ["oom-pretrain-a2"]
    reasons = [
        e.reason for e in jobs.core.list_namespaced_event(jobs.ns, field_selector="involvedObject.name=oom").items
    ]
    assert "Error" in reasons or any("137" in (e.message or "") for e in jobs.core.list_namespaced_event(jobs.ns).items)


def test_exit_2_fails_the_job_at_once(jobs: Any, manifest: Any, cond: Any) -> None:
    jobs.create(manifest("badcfg", nodes=2))
    jobs.wait_state("badcfg", "Running")
    victim = next(p for p in jobs.pods("badcfg", attempt=1) if rank(p) == 0)
    make_pod(jobs, victim, "fail", 2)
    status = jobs.wait_state("badcfg", "Failed")
    failed = cond(status, "Failed")
    assert failed["reason"] == "InvalidConfig"
    assert victim.metadata.name in failed["message"] and "exit 2" in failed["message"]
    assert status["restarts"] == 0 and status["attempt"] == 1
    wait_for(
        lambda: not any(p.status.phase in ("Pending", "Running") for p in jobs.pods("badcfg")),
        timeout=30,
        what="no pod running",
    )


def test_eviction_restarts_without_using_the_retry_budget(jobs: Any, manifest: Any, cond: Any) -> None:
    jobs.create(manifest("evicted", nodes=2, run_policy={"backoffLimit": 0}))
    jobs.wait_state("evicted", "Running")
    victim = jobs.pods("evicted", attempt=1)[0]
    make_pod(jobs, victim, "evict")
    status = jobs.wait(
        "evicted", lambda s: s.get("attempt") == 2 and s.get("state") == "Running", what="attempt 2 Running"
    )
    assert status["restarts"] == 0 and status["evictions"] == 1


def test_gang_too_big_for_the_cluster_fails_after_the_startup_deadline(jobs: Any, manifest: Any, cond: Any) -> None:
    jobs.create(manifest("toobig", nodes=2, gpus=16, run_policy={"startupDeadlineSeconds": 3}))
    pending = jobs.wait(
        "toobig", lambda s: cond(s, "Running").get("reason") == "Unschedulable", what="Running=False Unschedulable"
    )
    assert pending["state"] == "Created"
    status = jobs.wait_state("toobig", "Failed", timeout=60)
    failed = cond(status, "Failed")
    assert failed["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in failed["message"], failed["message"]
    assert "startupDeadlineSeconds (3s)" in failed["message"]
    wait_for(lambda: not jobs.pods("toobig"), timeout=30, what="the pending pods to be deleted")


def test_suspend_deletes_pods_and_resume_starts_a_new_attempt(jobs: Any, manifest: Any, cond: Any) -> None:
    jobs.create(manifest("pause", nodes=2))
    jobs.wait_state("pause", "Running")
    jobs.patch_spec("pause", {"runPolicy": {"suspend": True}})
    status = jobs.wait_state("pause", "Suspended")
    assert cond(status, "Suspended")["status"] == "True" and status["attempt"] == 1
    wait_for(lambda: not jobs.pods("pause"), timeout=30, what="the pods to be deleted")
    jobs.patch_spec("pause", {"runPolicy": {"suspend": False}})
    status = jobs.wait("pause", lambda s: s.get("state") == "Running" and s.get("attempt") == 2, what="resumed")
    assert status["restarts"] == 0
    assert cond(status, "Suspended")["reason"] == "Resumed"


def test_finished_job_is_deleted_after_its_ttl(jobs: Any, manifest: Any) -> None:
    jobs.create(manifest("short", outcome=None, run_policy={"ttlSecondsAfterFinished": 2}))
    status = jobs.wait_state("short", "Succeeded")
    assert status["output"]["uri"].endswith("/pretrainjob/short")
    assert status.get("completionTime")
    wait_for(lambda: jobs.get("short") is None, timeout=30, what="the TTL to delete the job")
    wait_for(lambda: not jobs.batch_jobs("short") and not jobs.pods("short"), timeout=30, what="children gone")


def test_deleting_the_job_removes_every_child(jobs: Any, manifest: Any) -> None:
    jobs.create(manifest("gone", nodes=2))
    jobs.wait_state("gone", "Running")
    jobs.delete("gone")

    def nothing_left() -> bool:
        selector = "forgeline.io/job=gone"
        return not (
            jobs.batch.list_namespaced_job(jobs.ns, label_selector=selector).items
            or jobs.core.list_namespaced_pod(jobs.ns, label_selector=selector).items
            or jobs.core.list_namespaced_service(jobs.ns, label_selector=selector).items
            or jobs.core.list_namespaced_config_map(jobs.ns, label_selector=selector).items
        )

    wait_for(nothing_left, timeout=60, what="every child to be garbage-collected")


def test_fifty_jobs_applied_at_once_all_reach_running(jobs: Any, manifest: Any) -> None:
    placement = {"nodeSelector": {"type": "kwok"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
    names = [f"many-{i:02d}" for i in range(50)]
    for name in names:
        jobs.create(manifest(name, gpus=0, **placement))

    def all_running() -> bool:
        items = jobs.custom.list_namespaced_custom_object("forgeline.io", "v1alpha1", jobs.ns, "pretrainjobs")["items"]
        running = [o for o in items if (o.get("status") or {}).get("state") == "Running"]
        return len(running) == len(names)

    wait_for(all_running, timeout=180, what="50 jobs Running")
    assert len(jobs.batch.list_namespaced_job(jobs.ns).items) == 50


def test_operator_killed_mid_run_converges_without_duplicates(jobs: Any, manifest: Any, operator: Any) -> None:
    jobs.create(manifest("survivor", nodes=2))
    jobs.wait_state("survivor", "Running")
    operator.kill()
    try:
        victim = jobs.pods("survivor", attempt=1)[0]
        make_pod(jobs, victim, "fail", 1)
        wait_for(
            lambda: any(p.status.phase == "Failed" for p in jobs.pods("survivor", attempt=1)),
            timeout=30,
            what="the failure while the operator is down",
        )
        jobs.create(manifest("newcomer", nodes=1))
    finally:
        operator.start()
    status = jobs.wait(
        "survivor", lambda s: s.get("attempt") == 2 and s.get("state") == "Running", what="attempt 2 after the restart"
    )
    assert status["restarts"] == 1
    jobs.wait_state("newcomer", "Running")
    live = [j.metadata.name for j in jobs.batch.list_namespaced_job(jobs.ns).items if not j.metadata.deletion_timestamp]
    assert sorted(live) == ["newcomer-pretrain-a1", "survivor-pretrain-a2"]
    assert len(jobs.pods("survivor", attempt=2)) == 2


def test_status_is_ours_alone_and_kubectl_shows_it(jobs: Any, manifest: Any, cluster: Any) -> None:
    jobs.create(manifest("tidy", nodes=1))
    jobs.wait_state("tidy", "Running")
    obj = jobs.get("tidy")
    assert obj is not None
    meta = obj["metadata"]
    assert not meta.get("finalizers"), "deleting a job must never wait for the operator"
    assert not [k for k in meta.get("annotations") or {} if "kopf" in k or "zalando" in k]
    assert set(obj["status"]) <= {
        "state", "conditions", "observedGeneration", "attempt", "restarts", "evictions", "replicas",
        "progress", "inputs", "output", "startTime", "completionTime",
    }  # fmt: skip
    table = cluster.kubectl("get", "pretrainjobs", "-n", jobs.ns, "tidy").stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "STATE", "PROGRESS"] or header.split()[:2] == ["NAME", "STATE"]
    assert row.split()[1] == "Running"


def test_operator_metrics_count_reconciles_restarts_and_gang_startup(jobs: Any, manifest: Any, operator: Any) -> None:
    jobs.create(manifest("measured", nodes=2))
    jobs.wait_state("measured", "Running")
    make_pod(jobs, jobs.pods("measured", attempt=1)[0], "fail", 137)
    jobs.wait("measured", lambda s: s.get("attempt") == 2 and s.get("state") == "Running", what="attempt 2 Running")

    def sample(name: str, **labels: str) -> float:
        for line in operator.metrics().splitlines():
            named = line.startswith((name + "{", name + " "))
            if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    assert sample("forgeline_operator_reconcile_total", kind="PretrainJob", result="success") > 0
    assert sample("forgeline_operator_restarts_total", kind="PretrainJob", reason="Error") >= 1
    assert sample("forgeline_operator_gang_startup_seconds_count", kind="PretrainJob") >= 2
    assert sample("forgeline_operator_reconcile_duration_seconds_count", kind="PretrainJob") > 0
    wait_for(
        lambda: sample("forgeline_operator_jobs", kind="PretrainJob", state="Running") >= 1,
        timeout=30,
        what="the jobs gauge",
    )


def test_downstream_waits_for_its_upstream_then_starts_with_its_output(jobs: Any, manifest: Any, cond: Any) -> None:
    lora = {
        "apiVersion": "forgeline.io/v1alpha1",
        "kind": "LoRAJob",
        "metadata": {"name": "tuned", "labels": {"testbed.forgeline.io/outcome": "hang"}},
        "spec": {
            "model": {"fromJob": {"kind": "PretrainJob", "name": "base"}},
            "data": {"synthetic": {"examples": 100}},
            "resources": {"nodes": 1, "gpusPerNode": 1},
        },
    }
    jobs.create(lora)
    waiting = jobs.wait("tuned", lambda s: s.get("state") == "Waiting", what="Waiting", kind="LoRAJob")
    assert cond(waiting, "InputsReady")["reason"] == "UpstreamMissing"
    jobs.create(manifest("base", outcome=None, nodes=1))  # kwok completes its pod at once
    upstream = jobs.wait_state("base", "Succeeded")
    status = jobs.wait("tuned", lambda s: s.get("state") == "Running", what="Running", kind="LoRAJob")
    assert cond(status, "InputsReady")["status"] == "True"
    assert status["inputs"] == [
        {"role": "model", "kind": "PretrainJob", "name": "base", "uri": upstream["output"]["uri"]}
    ]
    config = jobs.core.read_namespaced_config_map("tuned-lora-a1", jobs.ns).data["stage.json"]
    assert upstream["output"]["uri"] in config


def test_image_pull_backoff_fails_after_the_startup_deadline_naming_the_pod(
    jobs: Any, manifest: Any, cond: Any
) -> None:
    jobs.create(manifest("noimage", outcome="image-pull-backoff", nodes=1, run_policy={"startupDeadlineSeconds": 3}))
    status = jobs.wait_state("noimage", "Failed")
    failed = cond(status, "Failed")
    assert failed["reason"] == "ImagePullBackOff"
    assert "noimage-pretrain-a1-0" in failed["message"] and "Back-off pulling image" in failed["message"]


def test_active_deadline_fails_a_running_job_and_stops_its_pods(jobs: Any, manifest: Any, cond: Any) -> None:
    jobs.create(manifest("slow", nodes=2, run_policy={"activeDeadlineSeconds": 3}))
    jobs.wait_state("slow", "Running")
    status = jobs.wait_state("slow", "Failed", timeout=30)
    assert cond(status, "Failed")["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds (3s)" in cond(status, "Failed")["message"]
    wait_for(lambda: not jobs.pods("slow"), timeout=30, what="the pods to be deleted")
