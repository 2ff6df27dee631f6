"""Cross-job references through the Reconciler: cycles on every member, direct-uri manifests
checked before any pod, an upstream re-created after it failed, and the operator's defaults that
let a manifest leave storage and scheduling out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from testbed import builders
from testbed.builders import FROM_BASE, Obj, from_job, lora, pretrain
from testbed.fakecluster import FakeCluster, Harness

from forgeline.api import torchrun
from forgeline.api.validate import parse_job
from forgeline.cli.main import _toleration
from forgeline.operator.policies.inputs import UriCheck
from forgeline.operator.policies.output import final_progress
from forgeline.operator.reconcile import Reconciler
from forgeline.operator.render import LABEL_ATTEMPT, LABEL_JOB, LABEL_KIND, RenderSettings, render_attempt
from forgeline.operator.render import Owner as RenderOwner

DIGEST = "sha256:" + "b" * 64


def from_lora(name: str) -> Obj:
    return from_job("LoRAJob", name)


def inputs_ready(h: Harness, name: str) -> Obj:
    return next(c for c in h.status(name, "LoRAJob")["conditions"] if c["type"] == "InputsReady")


@pytest.mark.parametrize("members", [["a", "b"], ["a", "b", "c"]])
def test_a_cycle_is_reported_on_every_member_and_nothing_starts(members: list[str]) -> None:
    bodies = [lora(name, from_lora(members[(i + 1) % len(members)])) for i, name in enumerate(members)]
    h = Harness(*bodies)
    for name in members:
        h.run(name, "LoRAJob")
    for name in members:
        cond = inputs_ready(h, name)
        assert (h.status(name, "LoRAJob")["state"], cond["status"], cond["reason"]) == (
            "Waiting",
            "False",
            "ChainCycle",
        )
        assert "spec.model.fromJob" in cond["message"] and "cycle" in cond["message"], cond
        assert all(f"LoRAJob/{m}" in cond["message"] for m in members), cond
    assert not h.cluster.applied, "no child of a cycle member is created"


def test_a_job_downstream_of_a_cycle_waits_for_it_without_being_blamed() -> None:
    h = Harness(lora("a", from_lora("b")), lora("b", from_lora("a")), lora("c", from_lora("a")))
    for name in "abc":
        h.run(name, "LoRAJob")
    cond = inputs_ready(h, "c")
    assert cond["reason"] == "WaitingForUpstream" and "LoRAJob/a (state Waiting" in cond["message"], cond


def test_an_upstream_recreated_after_failing_is_consumed_once_it_succeeds() -> None:
    failed = pretrain()
    failed["status"] = {"state": "Failed", "conditions": [{"type": "Failed", "status": "True", "reason": "OOMKilled"}]}
    h = Harness(failed, lora("tuned", FROM_BASE))
    h.run("tuned", "LoRAJob")
    assert inputs_ready(h, "tuned")["reason"] == "UpstreamFailed"
    del h.cluster.objects[("PretrainJob", "default", "base")]
    h.run("tuned", "LoRAJob")
    assert inputs_ready(h, "tuned")["reason"] == "UpstreamMissing"
    done = pretrain()
    done["status"] = {
        "state": "Succeeded",
        "output": {"uri": "s3://store/default/pretrainjob/base", "digest": DIGEST},
        "completionTime": "2026-01-01T00:00:00.250000Z",
    }
    h.cluster.put(done)
    h.run("tuned", "LoRAJob")
    status = h.status("tuned", "LoRAJob")
    assert status["attempt"] == 1 and status["inputs"][0]["digest"] == DIGEST
    assert "Job/tuned-lora-a1" in h.cluster.applied


class Store:
    """A stand-in for the operator's look into the bucket: uri -> digest, or missing."""

    def __init__(self) -> None:
        self.manifests: dict[str, str] = {}
        self.asked: list[str] = []

    def __call__(self, uri: str) -> UriCheck:
        self.asked.append(uri)
        if uri in self.manifests:
            return UriCheck(True, digest=self.manifests[uri])
        return UriCheck(False, message="no _MANIFEST.json: the artifact is missing or its upload never finished")


def test_a_direct_uri_without_a_manifest_holds_the_job_before_any_pod() -> None:
    store = Store()
    cluster = FakeCluster()
    cluster.put(lora("tuned", {"uri": "s3://models/base"}))
    reconciler = Reconciler(cluster, RenderSettings(), check_uri=store)
    again = reconciler.reconcile("LoRAJob", "default", "tuned")
    status = cluster.get("LoRAJob", "default", "tuned")["status"]  # type: ignore[index]
    cond = next(c for c in status["conditions"] if c["type"] == "InputsReady")
    assert (status["state"], cond["reason"]) == ("Waiting", "InputManifestMissing")
    assert cond["message"].startswith("spec.model.uri: s3://models/base: no _MANIFEST.json"), cond
    assert again == 30.0 and not cluster.applied, "rechecked later; nothing created"
    store.manifests["s3://models/base"] = DIGEST
    reconciler.reconcile("LoRAJob", "default", "tuned")
    status = cluster.get("LoRAJob", "default", "tuned")["status"]  # type: ignore[index]
    assert status["attempt"] == 1 and status["inputs"] == [
        {"role": "model", "uri": "s3://models/base", "digest": DIGEST}
    ]
    config = json.loads(cluster.get("ConfigMap", "default", "tuned-lora-a1")["data"]["stage.json"])  # type: ignore[index]
    assert config["model"] == {"uri": "s3://models/base", "digest": DIGEST}, "the stage reads the pinned artifact"


def test_an_unreadable_store_does_not_hold_the_job() -> None:
    cluster = FakeCluster()
    cluster.put(lora("tuned", {"uri": "s3://models/base"}))
    reconciler = Reconciler(cluster, RenderSettings(), check_uri=lambda uri: UriCheck(None, message="no credentials"))
    reconciler.reconcile("LoRAJob", "default", "tuned")
    assert cluster.get("LoRAJob", "default", "tuned")["status"]["attempt"] == 1  # type: ignore[index]


def test_the_store_probe_reads_a_real_manifest(tmp_path: Path) -> None:
    from forgeline.jobs import storage as st
    from forgeline.jobs.contract import Manifest
    from forgeline.operator.artifacts import StoreProbe

    uri = f"file://{tmp_path}/model"
    manifest = Manifest(stage="pretrain", run={}, files=[], config={})
    sha = st.commit(st.Storage(), uri, manifest)
    found = StoreProbe()(uri)
    assert found == UriCheck(True, digest=f"sha256:{sha}")
    assert sha == hashlib.sha256((tmp_path / "model" / "_MANIFEST.json").read_bytes()).hexdigest()
    missing = StoreProbe()(f"file://{tmp_path}/nothing")
    assert missing.found is False and missing.message.startswith("no _MANIFEST.json"), missing


def test_a_finished_stage_shows_complete_progress_from_its_final_metrics() -> None:
    assert final_progress({"metrics": {"steps": 300.0}}, "t") == {
        "step": 300,
        "total": 300,
        "summary": "300/300 (100%)",
        "updated": "t",
    }
    assert final_progress({"uri": "s3://x"}, "t") is None


def test_operator_defaults_fill_storage_and_scheduling_the_manifest_leaves_out() -> None:
    job = parse_job(pretrain())
    settings = RenderSettings(
        store="s3://bucket",
        storage_endpoint="http://s3.local:8333",
        credentials_secret="store-keys",
        node_selector={"pool": "training", "zone": "a"},
        tolerations=({"key": "pool", "operator": "Exists", "effect": "NoSchedule"},),
    )
    config_map, _, batch_job = render_attempt(job, RenderOwner("uid"), 1, {}, settings)
    assert json.loads(config_map["data"]["stage.json"])["storage"]["endpoint"] == "http://s3.local:8333"
    pod = batch_job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "store-keys"
    assert pod["nodeSelector"] == {"pool": "training", "zone": "a"}
    assert {"key": "pool", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    own = pretrain()
    own["spec"]["resources"]["nodeSelector"] = {"zone": "b"}
    own["spec"]["storage"] = {"credentialsSecret": "mine", "endpoint": "http://other:9000"}
    config_map, _, batch_job = render_attempt(parse_job(own), RenderOwner("uid"), 1, {}, settings)
    pod = batch_job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "training", "zone": "b"}, "the job's own keys win"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mine"
    assert json.loads(config_map["data"]["stage.json"])["storage"]["endpoint"] == "http://other:9000"


@pytest.mark.parametrize(
    ("flag", "toleration"),
    [
        ("pool", {"key": "pool", "operator": "Exists"}),
        ("pool:NoSchedule", {"key": "pool", "operator": "Exists", "effect": "NoSchedule"}),
        ("pool=gpu:NoExecute", {"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}),
    ],
)
def test_toleration_flags(flag: str, toleration: Obj) -> None:
    assert _toleration(flag) == toleration


@pytest.mark.parametrize("flag", ["", ":NoSchedule", "pool:Sometimes"])
def test_bad_toleration_flags_say_what_is_expected(flag: str) -> None:
    with pytest.raises(ValueError, match="expected KEY"):
        _toleration(flag)


def test_a_rendezvous_port_range_spreads_attempts_and_every_render_agrees() -> None:
    from forgeline.cli.main import _port_range
    from forgeline.operator.render import master_port

    assert _port_range("29500", "-") == (29500, 29500) and _port_range("20000-29999", "-") == (20000, 29999)
    with pytest.raises(ValueError, match="LOW <= HIGH"):
        _port_range("3000-2000", "-")
    settings = RenderSettings(rendezvous_ports=(20000, 29999))
    ports = {master_port(f"uid-{i}", 1, settings) for i in range(50)}
    assert len(ports) > 40 and all(20000 <= p <= 29999 for p in ports)
    _, service, batch_job = render_attempt(parse_job(pretrain()), RenderOwner("uid-x"), 3, {}, settings)
    port = master_port("uid-x", 3, settings)
    assert service["spec"]["ports"][0]["port"] == port
    container = batch_job["spec"]["template"]["spec"]["containers"][0]
    assert {"name": torchrun.PET_MASTER_PORT, "value": str(port)} in container["env"]
    assert container["ports"][0]["containerPort"] == port
    assert master_port("uid-x", 3, RenderSettings()) == 29500


def test_the_controller_looks_again_at_downstream_jobs_when_an_upstream_changes_state() -> None:
    import time

    from forgeline.operator.controller import Controller

    cluster = FakeCluster()
    controller = Controller(cluster, RenderSettings(), workers=2, resync_seconds=3600)
    queued: list[str] = []
    add = controller.queue.add

    def record(key: tuple[str, str, str], delay: float = 0.0) -> None:
        if delay == 0.0:
            queued.append(key[2])
        add(key, delay)

    controller.queue.add = record  # type: ignore[method-assign]

    def reason(name: str) -> str | None:
        body = cluster.get("LoRAJob", "default", name) or {}
        conds = (body.get("status") or {}).get("conditions") or []
        return next((c["reason"] for c in conds if c["type"] == "InputsReady"), None)

    def wait(check: Any) -> None:
        deadline = time.monotonic() + 5
        while not check():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.005)

    controller.start()
    try:
        controller.job_changed(cluster.put(lora("a", from_lora("b"))))
        wait(lambda: reason("a") == "UpstreamMissing")
        queued.clear()
        controller.job_changed(cluster.put(lora("b", from_lora("a"))))  # b appears: a looks again
        assert queued == ["b", "a"]
        wait(lambda: reason("b") == "ChainCycle")
        queued.clear()
        controller.job_changed(cluster.get("LoRAJob", "default", "b"))  # the watch event of b's status
        assert queued == ["a"], "b's own write is no reason to look at b again; a reads b's state"
        wait(lambda: reason("a") == "ChainCycle")
        body = cluster.get("LoRAJob", "default", "b")
        assert body is not None
        body["status"]["progress"] = {"summary": "a write that changes neither state nor reason"}
        queued.clear()
        controller.job_changed(cluster.put(body))
        assert queued == ["b"], "its downstream is left alone"
    finally:
        controller.stop()


def test_a_trainer_metrics_port_range_is_rendered_per_attempt_and_scraped_there() -> None:
    from forgeline.operator.render import trainer_metrics_port

    settings = RenderSettings(metrics_port=30000, metrics_port_high=30999)
    _, _, batch_job = render_attempt(parse_job(pretrain()), RenderOwner("uid-x"), 2, {}, settings)
    port = trainer_metrics_port("uid-x", 2, settings)
    assert 30000 <= port <= 30999
    container = batch_job["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    assert trainer_metrics_port("uid-x", 2, RenderSettings(metrics_port=0)) == 0
    assert trainer_metrics_port("uid-x", 2, RenderSettings()) == 9400


def test_a_recreated_job_never_adopts_the_children_of_its_deleted_namesake() -> None:
    h = Harness(pretrain())
    labels = {LABEL_JOB: "base", LABEL_KIND: "PretrainJob", LABEL_ATTEMPT: "1"}
    failed = [("Failed", "BackoffLimitExceeded")]
    h.cluster.put(
        builders.batch_job("base-pretrain-a1", uid="job-old", labels=labels, owner_uid="uid-old", conditions=failed)
    )
    h.run()  # the leftover is deleted, not taken for attempt 1; ours waits for the name
    status = h.status()
    assert (status["attempt"], status["state"], status["restarts"]) == (1, "Created", 0)
    assert h.cluster.job_of(1) is None and "Job/base-pretrain-a1" not in h.cluster.applied
    h.run()
    job = h.cluster.job_of(1)
    assert job is not None and job["metadata"]["ownerReferences"][0]["uid"] == "uid-base"
    assert h.status()["state"] == "Created"
