"""The example pipeline end to end through the operator, with chaos on the way.

`kubectl apply -f examples/pipeline.yaml` (the file as it is) on the test cluster: five stages,
two "nodes" each, run as real torchrun gangs on the process node, artifacts in the seaweedfs S3
store (keys enforced). The manifests carry no storage or scheduling fields: the operator's flags
supply them, as a cluster's Helm values would (--store, --storage-endpoint, --storage-secret,
--node-selector/--toleration for the process node's taint, a dedicated training pool in real life).

On the way: a SIGKILLed trainer restarts its stage as a gang from its checkpoint, and a SIGKILLed
operator is restarted mid-pipeline and carries on without duplicating anything. At the end every
stage Succeeded with lineage pinned to the exact upstream digests, the training effects show in
status.output.metrics, `kubectl get llmjobs` and `forgeline status` show the pipeline, and every
manifest in the store (outputs and checkpoints) verifies file by file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from testbed.gangs import trainer_processes
from testbed.kube import wait_for
from testbed.operator import FORGELINE, OperatorProcess, store_namespace, store_operator

from forgeline.jobs import storage as st

pytestmark = [pytest.mark.cluster, pytest.mark.train, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "forgeline.io", "v1alpha1"
STAGES = {  # name -> (kind, plural, stage)
    "base": ("PretrainJob", "pretrainjobs", "pretrain"),
    "judge": ("RewardModelJob", "rewardmodeljobs", "reward"),
    "aligned": ("RLHFJob", "rlhfjobs", "rlhf"),
    "tuned": ("LoRAJob", "lorajobs", "lora"),
    "compare": ("EvalJob", "evaljobs", "eval"),
}
SECRET = "forgeline-store"


@pytest.fixture
def pipeline_ns(cluster: Any, s3: Any) -> Iterator[str]:
    ns = store_namespace(cluster, s3, "pipeline", SECRET)
    core = client.CoreV1Api(cluster.client)
    yield ns
    cluster.kubectl("delete", "-n", ns, "-f", str(REPO / "examples" / "pipeline.yaml"), "--wait=false", check=False)
    wait_for(
        lambda: not core.list_namespaced_pod(ns, label_selector="forgeline.io/job").items,
        timeout=120,
        what=f"the pods in {ns} to be deleted",
    )
    core.delete_namespace(ns)


@pytest.fixture
def operator(cluster: Any, s3: Any, pipeline_ns: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = store_operator(cluster, s3, pipeline_ns, tmp_path, SECRET)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def histogram(text: str, name: str) -> tuple[float, float, dict[str, float]]:
    """(sum, count, {le: cumulative count}) of one histogram, summed over its labels."""
    total = count = 0.0
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_bucket"):
            le = re.search(r'le="([^"]+)"', line)
            assert le is not None
            buckets[le.group(1)] = buckets.get(le.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return total, count, buckets


def test_example_pipeline_through_the_operator_with_chaos(
    cluster: Any, s3: Any, pipeline_ns: str, operator: OperatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = pipeline_ns
    started = time.monotonic()
    custom = client.CustomObjectsApi(cluster.client)
    batch = client.BatchV1Api(cluster.client)
    s3c = s3.client()

    def status(name: str) -> dict[str, Any]:
        _, plural, _ = STAGES[name]
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name).get("status") or {})

    def wait(check: Any, *, timeout: float, what: str) -> Any:
        try:
            return wait_for(check, timeout=timeout, what=what, interval=0.2)
        except AssertionError:
            summary = {n: (status(n).get("state"), status(n).get("conditions")) for n in STAGES}
            raise AssertionError(f"{what}: {summary}\n--- operator logs:\n{operator.logs()}") from None

    cluster.kubectl("apply", "-n", ns, "-f", str(REPO / "examples" / "pipeline.yaml"))

    # -- downstream stages wait, naming the upstream and its state ------------------------------
    judge = wait(lambda: (s := status("judge")).get("state") == "Waiting" and s, timeout=60, what="judge Waiting")
    inputs = next(c for c in judge["conditions"] if c["type"] == "InputsReady")
    assert inputs["status"] == "False" and inputs["reason"] == "WaitingForUpstream", inputs
    assert "PretrainJob/base" in inputs["message"] and "state" in inputs["message"], inputs

    # -- chaos 1: SIGKILL a trainer of base once its first checkpoint is committed ---------------
    checkpoint = f"{ns}/pretrainjob/base/checkpoints/step-100/_MANIFEST.json"
    wait(lambda: s3c.head_object(Bucket=s3.bucket, Key=checkpoint), timeout=300, what="base's step-100 checkpoint")
    victims = wait(lambda: trainer_processes(ns, "base-pretrain-a1-1"), timeout=30, what="base rank 1's trainer")
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    wait(lambda: status("base").get("attempt") == 2, timeout=60, what="base restarted as attempt 2")

    # -- chaos 2: restart the operator while the next stages run ---------------------------------
    wait(
        lambda: status("judge").get("state") == "Running" and status("tuned").get("state") == "Running",
        timeout=400,
        what="judge and tuned Running",
    )
    # Live progress (scraped from rank 0) in `kubectl get llmjobs` for a running stage.
    # (STATE, then REASON, ATTEMPT and RESTARTS, then PROGRESS.)
    live = re.compile(r"\sRunning\s.*?\s(\d+)/(\d+) \(\d+%\)")

    def running_with_progress() -> str | None:
        table = cluster.kubectl("get", "llmjobs", "-n", ns).stdout
        return table if any(int(step) < int(total) for step, total in live.findall(table)) else None

    wait(running_with_progress, timeout=300, what="a running stage with live progress in kubectl get llmjobs")
    first_metrics = operator.metrics()
    operator.kill()
    operator.start()

    # -- the pipeline finishes -------------------------------------------------------------------
    def all_done() -> dict[str, dict[str, Any]] | None:
        states = {n: status(n) for n in STAGES}
        failed = any(s.get("state") == "Failed" for s in states.values())  # no point waiting on
        return states if failed or all(s.get("state") == "Succeeded" for s in states.values()) else None

    final = wait(all_done, timeout=600, what="every stage Succeeded")
    failed = {n: s.get("conditions") for n, s in final.items() if s.get("state") != "Succeeded"}
    assert not failed, failed
    elapsed = time.monotonic() - started
    second_metrics = operator.metrics()

    # -- restarts: base once, as a gang, from its checkpoint; the others never -------------------
    base = final["base"]
    assert (base["restarts"], base["attempt"]) == (1, 2), base
    assert 100 <= base["output"]["metrics"]["resumed_from"] < 300, base["output"]["metrics"]
    for name in ("judge", "aligned", "tuned", "compare"):
        assert (final[name]["restarts"], final[name]["attempt"]) == (0, 1), (name, final[name])
    # No duplicates after the operator restart: one batch Job (earlier attempts are deleted when
    # the next starts) and one pod per node, all of the recorded attempt.
    core = client.CoreV1Api(cluster.client)
    for name, (_, _, stage) in STAGES.items():
        selector = f"forgeline.io/job={name}"
        children = [j.metadata.name for j in batch.list_namespaced_job(ns, label_selector=selector).items]
        assert children == [f"{name}-{stage}-a{final[name]['attempt']}"], children
        pods = core.list_namespaced_pod(ns, label_selector=selector).items
        assert sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
        assert {p.metadata.labels["forgeline.io/attempt"] for p in pods} == {str(final[name]["attempt"])}

    # -- lineage: each input pinned to the exact upstream digest ---------------------------------
    def output(name: str) -> dict[str, Any]:
        out = final[name]["output"]
        assert out["uri"] == f"s3://{s3.bucket}/{ns}/{STAGES[name][0].lower()}/{name}", out
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", out["digest"]), out
        return dict(out)

    def lineage(name: str) -> dict[str, tuple[str, str, str, str]]:
        return {r["role"]: (r["kind"], r["name"], r["uri"], r["digest"]) for r in final[name]["inputs"]}

    up = {n: output(n) for n in STAGES}
    assert lineage("judge") == {"model": ("PretrainJob", "base", up["base"]["uri"], up["base"]["digest"])}
    assert lineage("tuned") == {"model": ("PretrainJob", "base", up["base"]["uri"], up["base"]["digest"])}
    assert lineage("aligned") == {
        "policy": ("PretrainJob", "base", up["base"]["uri"], up["base"]["digest"]),
        "rewardModel": ("RewardModelJob", "judge", up["judge"]["uri"], up["judge"]["digest"]),
    }
    assert lineage("compare") == {
        "models.base": ("PretrainJob", "base", up["base"]["uri"], up["base"]["digest"]),
        "models.tuned": ("LoRAJob", "tuned", up["tuned"]["uri"], up["tuned"]["digest"]),
        "models.aligned": ("RLHFJob", "aligned", up["aligned"]["uri"], up["aligned"]["digest"]),
        "judge": ("RewardModelJob", "judge", up["judge"]["uri"], up["judge"]["digest"]),
    }

    # -- the training effects, from status.output.metrics -----------------------------------------
    base_m, judge_m, rlhf_m, lora_m = (up[n]["metrics"] for n in ("base", "judge", "aligned", "tuned"))
    assert base_m["eval_loss_final"] < base_m["eval_loss_initial"] - 1.0, base_m
    assert judge_m["eval_accuracy_final"] >= 0.85 > judge_m["eval_accuracy_initial"] + 0.2, judge_m
    assert rlhf_m["eval_after_reward"] > rlhf_m["eval_before_reward"] + 1.0, rlhf_m
    assert rlhf_m["eval_after_true_reward"] > rlhf_m["eval_before_true_reward"], rlhf_m
    assert lora_m["eval_loss_final"] < lora_m["eval_loss_initial"], lora_m
    # The EvalJob's compact table: the judge prefers the aligned model to the base.
    eval_m = up["compare"]["metrics"]
    assert eval_m["winRate.aligned"] > 0.5 == eval_m["winRate.base"] and eval_m["rating.base"] == 1000.0, eval_m

    # -- seeing it: kubectl get llmjobs, forgeline status ----------------------------------------
    table = cluster.kubectl("get", "llmjobs", "-n", ns, "-o", "wide").stdout
    for name in STAGES:
        row = next(line for line in table.splitlines() if re.search(rf"\b{name}\b", line))
        assert "Succeeded" in row and "100%" in row and up[name]["uri"] in row, (row, table)
    tree = subprocess.run(
        [str(FORGELINE), "status", "-n", ns], env=cluster.env(), capture_output=True, text=True, check=True
    ).stdout
    lines = tree.splitlines()
    assert lines[1].startswith("PretrainJob/base"), tree
    assert any(re.match(r"[├└]─ RewardModelJob/judge", line) for line in lines), tree
    assert any(re.match(r"[├└]─ LoRAJob/tuned", line) for line in lines), tree
    # aligned is no longer judge's last child: the EvalJob (its last input is the judge) hangs there too.
    assert any(re.search(r"[├└]─ RLHFJob/aligned \(\+ PretrainJob/base\)", line) for line in lines), tree
    assert any(re.search(r"─ EvalJob/compare \(\+ ", line) for line in lines), tree
    assert sum("Succeeded" in line for line in lines) == 5 and "(1 restarts)" in tree, tree
    assert up["aligned"]["digest"].removeprefix("sha256:")[:12] in tree, tree

    # -- every manifest in the store verifies: sizes and sha256 of every file --------------------
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    store = st.Storage(s3.endpoint)
    keys = [
        o["Key"]
        for page in s3c.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=f"{ns}/")
        for o in page.get("Contents", [])
        if o["Key"].endswith("/_MANIFEST.json")
    ]
    artifacts = [f"s3://{s3.bucket}/{k.removesuffix('/_MANIFEST.json')}" for k in keys]
    assert {o["uri"] for o in up.values()} <= set(artifacts), artifacts
    assert any("/checkpoints/" in a for a in artifacts), artifacts
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    for i, uri in enumerate(artifacts):
        digest = next((o["digest"] for o in up.values() if o["uri"] == uri), None)
        manifest, _ = st.fetch(store, uri, st.fresh_dir(scratch / f"verify-{ns}-{i}"), digest)
        assert manifest.files, uri

    # -- hand-offs through the operator's own metric ------------------------------------------------
    h_sum, h_count, buckets = histogram(first_metrics, "forgeline_operator_stage_handoff_seconds")
    h2_sum, h2_count, buckets2 = histogram(second_metrics, "forgeline_operator_stage_handoff_seconds")
    assert h_count + h2_count == 4, (first_metrics, second_metrics)  # judge, tuned; aligned; compare
    within = buckets.get("1.0", 0) + buckets2.get("1.0", 0)
    print(
        f"\npipeline e2e: {elapsed:.0f}s; hand-offs {h_count + h2_count:.0f}, mean "
        f"{(h_sum + h2_sum) / (h_count + h2_count):.3f}s, {within:.0f} within 1 s; "
        f"reward accuracy {judge_m['eval_accuracy_initial']:.2f}->{judge_m['eval_accuracy_final']:.2f}, "
        f"RLHF reward {rlhf_m['eval_before_reward']:.2f}->{rlhf_m['eval_after_reward']:.2f}, "
        f"true reward {rlhf_m['eval_before_true_reward']:.2f}->{rlhf_m['eval_after_true_reward']:.2f}, "
        f"base resumed from step {base_m['resumed_from']:.0f}; EvalJob win rate vs base: aligned "
        f"{eval_m['winRate.aligned']:.3f}, tuned {eval_m['winRate.tuned']:.3f}"
    )
    assert within == h_count + h2_count, (buckets, buckets2)
