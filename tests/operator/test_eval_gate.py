"""An EvalJob and two gated stages through the operator, on the process node: the EvalJob waits
for its model, runs as a torchrun gang and records its table in status.output.metrics; the stage
whose gate holds starts, the one whose gate fails goes to GateFailed without a pod."""

from __future__ import annotations

from typing import Any

import pytest
from testbed.processnode import PROCESS_NODE_LABEL

pytestmark = [pytest.mark.cluster, pytest.mark.train, pytest.mark.timeout(600)]

ON_PROCESS_NODE = {
    "nodeSelector": {PROCESS_NODE_LABEL: "true"},
    "tolerations": [{"key": PROCESS_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}
RESOURCES = {"nodes": 1, "procsPerNode": 1, "gpusPerNode": 0, **ON_PROCESS_NODE}
RUN_POLICY = {"backoffLimit": 0, "startupDeadlineSeconds": 120}


def job(kind: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "forgeline.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"resources": RESOURCES, "runPolicy": RUN_POLICY, **spec},
    }


def gated(name: str, condition: str) -> dict[str, Any]:
    return job(
        "LoRAJob",
        name,
        model={"fromJob": {"kind": "PretrainJob", "name": "base"}},
        gate={"evalJob": "compare", "condition": condition},
        data={"synthetic": {"examples": 60}},
        training={"maxSteps": 2, "batchSize": 4, "logInterval": 1},
    )


def test_eval_job_result_releases_one_gated_stage_and_fails_the_other(jobs: Any, operator: Any, cond: Any) -> None:
    jobs.create(
        job(
            "PretrainJob",
            "base",
            model={"config": {"layers": 1, "hiddenSize": 32, "heads": 2, "vocabSize": 512, "contextLength": 32}},
            data={"synthetic": {"examples": 200}},
            training={"maxSteps": 4, "batchSize": 4, "logInterval": 1},
        )
    )
    jobs.create(
        job(
            "EvalJob",
            "compare",
            models=[{"name": "base", "fromJob": {"kind": "PretrainJob", "name": "base"}}],
            baseline="base",
            bestOfN=[1, 2],
            data={"synthetic": {"examples": 200}, "prompts": 6},
            generation={"maxNewTokens": 6},
        )
    )
    jobs.create(gated("lenient", "trueReward(base) > -1"))
    jobs.create(gated("strict", "trueReward(base) >= 0.9"))
    waiting = jobs.wait_state("strict", "Waiting", kind="LoRAJob", timeout=60)
    assert "EvalJob/compare" in cond(waiting, "InputsReady")["message"]

    def finished(s: dict[str, Any]) -> bool:
        return s.get("state") in ("Succeeded", "Failed")

    try:
        strict = jobs.wait("strict", finished, kind="LoRAJob", timeout=480, what="to finish")
        lenient = jobs.wait("lenient", finished, kind="LoRAJob", timeout=240, what="to finish")
    except AssertionError:
        raise AssertionError(f"operator log:\n{operator.log()}") from None
    evaluated = jobs.status("compare", kind="EvalJob")
    assert evaluated["state"] == "Succeeded", cond(evaluated, "Failed")
    metrics = evaluated["output"]["metrics"]
    assert metrics["steps"] == 1 and metrics["prompts"] == 6 and -1 <= metrics["trueReward.base"] <= 1, metrics
    assert evaluated["progress"]["summary"] == "1/1 (100%)"
    assert [r["role"] for r in evaluated["inputs"]] == ["models.base"]

    failed = cond(strict, "Failed")
    assert strict["state"] == "Failed" and failed["reason"] == "GateFailed", strict
    assert f"trueReward(base) = {metrics['trueReward.base']:.4g}" in failed["message"], failed
    assert not jobs.batch_jobs("strict"), "a failed gate starts no pod"

    assert lenient["state"] == "Succeeded", cond(lenient, "Failed")
    gate = next(r for r in lenient["inputs"] if r["role"] == "gate")
    assert (gate["kind"], gate["name"], gate["digest"]) == ("EvalJob", "compare", evaluated["output"]["digest"])
