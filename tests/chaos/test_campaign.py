"""A pipeline through a storm of faults, on the real control plane, the process node and seaweedfs.

A seeded schedule (schedule.py; the seed is printed, FORGELINE_CHAOS_SEED replays it) kills
trainers (SIGKILL and SIGTERM, any rank, as a checkpoint save starts and as a hand-off starts a
stage), evicts pods, SIGKILLs the operator (also the instant a new attempt's Job appears, before
its pass has finished), restarts kube-apiserver and takes the S3 store down while a checkpoint is
saved. Then: every stage Succeeded; every `_MANIFEST.json` in the store verifies file by file (so
no partial artifact has one); the watch history never shows an attempt with two batch Jobs or two
gangs; every new attempt is explained by its Restarting condition's reason; evictions are counted
apart from the retry budget; no trainer failed for the outage (the store was retried).

`make test` runs the quick campaign (a 2-stage pipeline, a handful of faults);
`make chaos` runs the full one (FORGELINE_CHAOS_CAMPAIGN=full: the example pipeline, >= 20
trainer kills, >= 10 operator kills, an API server restart, a 30 s outage) and prints its figures.
"""

from __future__ import annotations

import copy
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chaos.campaign import Driver, Pipeline
from chaos.schedule import FULL, QUICK, make_schedule, seed_from_env
from kubernetes import client
from testbed.gangs import duplicate_gangs
from testbed.operator import OperatorProcess, store_namespace
from testbed.processnode import PROCESS_NODE_LABEL

from forgeline.api.kinds import KINDS
from forgeline.jobs import storage as st

pytestmark = [pytest.mark.cluster, pytest.mark.train, pytest.mark.timeout(7200)]

REPO = Path(__file__).resolve().parents[2]
SECRET = "forgeline-store"
CAMPAIGN_ENV = "FORGELINE_CHAOS_CAMPAIGN"
BACKOFF_LIMIT = 60  # far above what a campaign uses: a campaign never fails for its own kills


def chaos_tuning(doc: dict[str, Any]) -> dict[str, Any]:
    """A campaign's version of a stage: a step per log line, a checkpoint every 10 steps."""
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    if "training" in spec:
        spec["training"] = {**spec["training"], "checkpointInterval": 10, "logInterval": 1}
    spec["runPolicy"] = {**spec.get("runPolicy", {}), "backoffLimit": BACKOFF_LIMIT}
    return doc


def quick_pipeline() -> list[dict[str, Any]]:
    resources = {"nodes": 2, "procsPerNode": 1, "gpusPerNode": 0}
    base = {
        "apiVersion": "forgeline.io/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": "base"},
        "spec": {
            "model": {"config": {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 512, "contextLength": 64}},
            "data": {"synthetic": {"examples": 2000, "seed": 1}},
            "training": {"maxSteps": 60, "batchSize": 8, "learningRate": 3e-3},
            "resources": resources,
        },
    }
    tuned = {
        "apiVersion": "forgeline.io/v1alpha1",
        "kind": "LoRAJob",
        "metadata": {"name": "tuned"},
        "spec": {
            "model": {"fromJob": {"kind": "PretrainJob", "name": "base"}},
            "lora": {"r": 4, "alpha": 16, "targetModules": ["q_proj", "v_proj"], "merge": True},
            "data": {"synthetic": {"examples": 500, "seed": 4}},
            "training": {"maxSteps": 60, "batchSize": 8, "learningRate": 3e-3},
            "resources": resources,
        },
    }
    return [chaos_tuning(base), chaos_tuning(tuned)]


def full_pipeline() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "pipeline.yaml").read_text()) if d]
    return [chaos_tuning(d) for d in docs]


def campaign_operator(cluster: Any, s3: Any, ns: str, workdir: Path) -> OperatorProcess:
    args = [
        f"--namespace={ns}",
        f"--store=s3://{s3.bucket}", f"--storage-endpoint={s3.endpoint}",
        f"--storage-secret={SECRET}", f"--trainer-env=AWS_DEFAULT_REGION={s3.region}",
        f"--node-selector={PROCESS_NODE_LABEL}=true", f"--toleration={PROCESS_NODE_LABEL}:NoSchedule",
        "--trainer-env=FORGELINE_SCRATCH=/tmp/forgeline-pod-scratch",
        # No trainer metrics endpoint: a port taken by anything else on this machine would fail a
        # gang for reasons no fault explains; the driver reads progress from rank 0's log.
        "--trainer-metrics-port=0", "--resync-seconds=10", "--workers=4",
    ]  # fmt: skip
    return OperatorProcess(args, cluster.env(), workdir)


@pytest.fixture
def campaign_ns(cluster: Any, s3: Any) -> Iterator[str]:
    ns = store_namespace(cluster, s3, "chaos", SECRET)
    core = client.CoreV1Api(cluster.client)
    yield ns
    core.delete_namespace(ns)


def storage_retries(cluster: Any, ns: str) -> Counter[str]:
    """What the trainers retried against the store, from their logs: checkpoint/output x upload/commit."""
    seen: Counter[str] = Counter()
    for log in (cluster.process_node.workdir / "pods" / ns).glob("*/logs/*.log"):
        for line in log.read_text(errors="replace").splitlines():
            m = re.search(r"forgeline: storage: (\w+)([^:]*): .*; retry 1 in", line)
            if m is None:
                continue
            where = "checkpoint" if "/checkpoints/" in m.group(2) else "output"
            what = "commit" if "_MANIFEST.json" in m.group(2) else m.group(1)
            seen[f"{where} {what}"] += 1
    return seen


def verify_store(s3: Any, ns: str, monkeypatch: pytest.MonkeyPatch, scratch: Path) -> tuple[int, int]:
    """Fetch every artifact with a manifest (each file's size and sha256 checked); (verified, debris)."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    store = st.Storage(s3.endpoint)
    keys = [
        o["Key"]
        for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=f"{ns}/")
        for o in page.get("Contents", [])
    ]
    manifests = {k.removesuffix("/_MANIFEST.json") for k in keys if k.endswith("/_MANIFEST.json")}
    for i, prefix in enumerate(sorted(manifests)):
        manifest, _ = st.fetch(store, f"s3://{s3.bucket}/{prefix}", st.fresh_dir(scratch / f"verify-{i}"))
        assert manifest.files, prefix
    step_dirs = {m.group(0) for k in keys if (m := re.match(r".*/checkpoints/step-\d+", k))}
    return len(manifests), len(step_dirs - manifests)


def test_pipeline_survives_a_seeded_fault_campaign(
    cluster: Any, s3: Any, campaign_ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = os.environ.get(CAMPAIGN_ENV, "quick") == "full"
    spec, manifests = (FULL, full_pipeline()) if full else (QUICK, quick_pipeline())
    seed = seed_from_env()
    faults = make_schedule(spec, seed)
    print(f"\nchaos: {'full' if full else 'quick'} campaign, seed {seed} (FORGELINE_CHAOS_SEED={seed} replays it)")
    for fault in faults:
        print(f"  scheduled: {fault.describe()}")
    ns = campaign_ns
    pipeline = Pipeline(manifests, {m["metadata"]["name"]: KINDS[m["kind"]].plural for m in manifests})
    operator = campaign_operator(cluster, s3, ns, tmp_path / "operator")
    operator.start()
    driver = Driver(cluster=cluster, s3=s3, operator=operator, ns=ns, pipeline=pipeline, seed=seed)
    driver.start()
    try:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(manifests))
        driver.run(faults, timeout_each=600)
        driver.wait(driver.done, timeout=3600, what="every stage finished")
        final = {n: driver.status(n) for n in pipeline.manifests}
    finally:
        driver.stop()
        operator.stop()
        cluster.kubectl("delete", "-n", ns, "-f", "-", "--wait=false", check=False, input=yaml.safe_dump_all(manifests))
    ledger = driver.ledger

    # -- every stage Succeeded ----------------------------------------------------------------------
    failed = {n: s.get("conditions") for n, s in final.items() if s.get("state") != "Succeeded"}
    assert not failed, f"seed {seed}: {failed}\n{operator.logs()}"

    # -- the faults really happened ------------------------------------------------------------------
    injected = Counter(i.fault.kind for i in ledger.injected)
    by_signal = Counter(i.fault.describe().split(" ")[1] for i in ledger.injected if i.fault.kind == "trainer")
    moments = Counter(i.fault.moment for i in ledger.injected if i.fault.kind in ("trainer", "operator"))
    print(f"chaos: injected {dict(injected)}, trainer signals {dict(by_signal)}, moments {dict(moments)}")
    for fault, why in ledger.missed:
        print(f"chaos: missed {fault.describe()}: {why}")
    if full:
        assert injected["trainer"] >= 20 and injected["operator"] >= 10, (seed, injected, ledger.missed)
    else:
        assert not ledger.missed, (seed, ledger.missed)
    assert injected["apiserver"] == spec.apiserver_restarts and injected["s3-outage"] == 1, (seed, injected)
    assert moments["after-apply"] >= 1 and moments["handoff"] >= 1, (seed, moments)

    # -- never two Jobs or two gangs of one attempt, from the watch history --------------------------
    sightings = driver.recorder.snapshot()
    duplicates = duplicate_gangs(sightings, pipeline.nodes)
    assert not duplicates, (seed, duplicates)

    # -- restarts counted, each explained by its condition; evictions apart from the budget ---------
    reasons: Counter[str] = Counter()
    for job in pipeline.manifests:
        seen = 1
        for event in (e for e in ledger.statuses if e.job == job):
            if event.attempt > seen:
                cond = event.restarting or {}
                assert cond.get("status") == "True" and cond.get("reason"), (seed, job, event)
                assert f"attempt {event.attempt - 1}" in str(cond.get("message")), (seed, job, event)
                reasons[str(cond["reason"])] += event.attempt - seen
                seen = event.attempt
        status = final[job]
        assert status["attempt"] - 1 == status.get("restarts", 0) + status.get("evictions", 0), (seed, job, status)
    restarts = sum(s.get("restarts", 0) for s in final.values())
    evictions = sum(s.get("evictions", 0) for s in final.values())
    # An eviction restarts the gang uncounted: "Evicted" when the pod's DisruptionTarget condition
    # was read, "PodLost" when the pod was already gone.
    assert evictions == injected["evict"] == reasons["Evicted"] + reasons["PodLost"], (seed, evictions, reasons)
    # A pod admitted while kube-apiserver restarts cannot read its Secret: the process node fails it
    # (CreateContainerConfigError, a counted restart) where a kubelet would retry. Anything else
    # counted must be one of the trainer kills.
    unexplained = restarts - reasons["CreateContainerConfigError"]
    assert unexplained <= injected["trainer"], f"seed {seed}: restarts nothing explains: {reasons}"

    # -- the store: every manifest verifies; the outage was waited out, not failed on -----------------
    verified, debris = verify_store(s3, ns, monkeypatch, tmp_path / "verify")
    retried = storage_retries(cluster, ns)
    assert retried, f"seed {seed}: the outage hit no store operation"
    assert "StorageUnavailable" not in "".join(str(s.get("conditions")) for s in final.values())

    apiserver = ", ".join(f"{a:.1f}s" for a in ledger.apiserver_away)
    watch_gaps = driver.recorder.watch_restarts
    print(
        f"chaos: seed {seed}; faults {dict(injected)}; restarts {restarts} (reasons {dict(reasons)}), "
        f"evictions {evictions} (not counted); artifacts verified {verified}, checkpoint debris without "
        f"a manifest {debris}; duplicates seen {len(duplicates)} in {len(sightings)} watch events; store "
        f"operations retried through the outage {dict(retried)}; kube-apiserver away {apiserver}; "
        f"watch reconnects {watch_gaps}"
    )
