"""Preflight: settings a pod could only fail on are refused before any pod exists.

Each check is stated twice where it lives twice: at admission (CEL, the same rule `forgeline
validate` runs offline, through parse_job) and, where a schema cannot express it, by the operator
before the first attempt (a Failed condition naming the field, nothing applied).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from testbed.builders import TINY_MODEL, from_job, job, job_body, observed

from forgeline.api.manifests import load_documents
from forgeline.api.semantics import managed_key, metadata_problems, semantic_problems
from forgeline.api.validate import InvalidManifest, parse_job, validate_documents
from forgeline.operator.decide import decide
from forgeline.operator.render import RenderSettings

SETTINGS = RenderSettings(store="s3://store")


def refused(body: dict[str, Any]) -> list[str]:
    """The field paths `forgeline validate` (and the API server, through the same CEL) names."""
    with pytest.raises(InvalidManifest) as exc:
        parse_job(body)
    return [e.path for e in exc.value.errors]


def rloo(batch: int, generations: int, algorithm: str = "rloo") -> dict[str, Any]:
    settings: dict[str, Any] = {"policy": {"uri": "s3://m/p"}, "algorithm": algorithm}
    settings["generationsPerPrompt"] = generations
    if algorithm != "dpo":
        settings["rewardModel"] = {"uri": "s3://m/r"}
    return job_body("RLHFJob", "aligned", rlhf=settings, training={"batchSize": batch})


def test_rloo_generations_that_do_not_divide_the_batch_are_refused() -> None:
    assert refused(rloo(batch=6, generations=4)) == ["spec.rlhf.generationsPerPrompt"]
    parse_job(rloo(batch=8, generations=4))
    parse_job(rloo(batch=6, generations=4, algorithm="dpo"))  # dpo samples no groups


def test_an_odd_head_dimension_is_refused_because_rope_rotates_pairs() -> None:
    body = job_body(model={"config": {**TINY_MODEL, "hiddenSize": 12, "heads": 4}})  # head dim 3
    assert refused(body) == ["spec.model.config.hiddenSize"]
    parse_job(job_body(model={"config": {**TINY_MODEL, "hiddenSize": 16, "heads": 4}}))


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused() -> None:
    body = job_body(tokenizer={"vocabSize": TINY_MODEL["vocabSize"] * 2})
    assert refused(body) == ["spec.tokenizer.vocabSize"]
    parse_job(job_body(tokenizer={"vocabSize": TINY_MODEL["vocabSize"]}))


def test_fp16_without_a_gpu_is_refused() -> None:
    body = job_body(training={"precision": "fp16"}, resources={"gpusPerNode": 0})
    assert refused(body) == ["spec.training.precision"]
    parse_job(job_body(training={"precision": "fp16"}, resources={"gpusPerNode": 1}))


@pytest.mark.parametrize(("warmup", "steps", "ok"), [(10, 10, False), (11, 10, False), (9, 10, True)])
def test_warmup_must_end_before_the_run_does(warmup: int, steps: int, ok: bool) -> None:
    body = job_body(training={"maxSteps": steps, "warmupSteps": warmup})
    if ok:
        parse_job(body)
    else:
        assert refused(body) == ["spec.training.warmupSteps"]


def test_a_startup_deadline_longer_than_the_active_deadline_is_refused() -> None:
    body = job_body(runPolicy={"activeDeadlineSeconds": 60, "startupDeadlineSeconds": 120})
    assert refused(body) == ["spec.runPolicy.startupDeadlineSeconds"]


def test_the_default_startup_deadline_shrinks_to_a_shorter_active_deadline() -> None:
    assert job(job_body(runPolicy={"activeDeadlineSeconds": 60})).spec.run_policy.startup_deadline == 60
    assert job(job_body()).spec.run_policy.startup_deadline == 900


@pytest.mark.parametrize(("procs", "ok"), [(64, True), (65, False), (131072, False)])
def test_cpu_processes_per_pod_are_capped(procs: int, ok: bool) -> None:
    body = job_body(resources={"gpusPerNode": 0, "procsPerNode": procs})
    if ok:
        assert job(body).spec.resources.procs == procs
    else:
        assert refused(body) == ["spec.resources.procsPerNode"]


def test_completions_longer_than_the_policys_context_fail_before_any_pod() -> None:
    base = job_body("PretrainJob", "base")  # contextLength 64
    body = job_body(
        "RLHFJob",
        "aligned",
        rlhf={"policy": from_job("PretrainJob", "base"), "rewardModel": {"uri": "s3://m/r"}, "maxCompletionLength": 64},
    )
    (problem,) = semantic_problems(job(body), lambda key: job(base) if key.name == "base" else None)
    assert problem.field == "spec.rlhf.maxCompletionLength" and "64 tokens" in problem.message
    plan = decide(job(body), observed(body, graph=[base]), SETTINGS)
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert plan.status["state"] == "Failed" and failed["reason"] == "InvalidSpec"
    assert "spec.rlhf.maxCompletionLength" in failed["message"]
    assert plan.apply == []


def test_the_context_is_found_through_a_chain_of_upstreams() -> None:
    base = job(job_body("PretrainJob", "base"))
    tuned = job(job_body("LoRAJob", "tuned", model=from_job("PretrainJob", "base")))
    body = job_body(
        "RLHFJob", "aligned", rlhf={"policy": from_job("LoRAJob", "tuned"), "rewardModel": {"uri": "s3://m/r"}}
    )
    known = {("PretrainJob", "base"): base, ("LoRAJob", "tuned"): tuned}
    assert semantic_problems(job(body), lambda k: known.get((k.kind, k.name))) == []  # 16 < 64
    long = {**body["spec"]["rlhf"], "maxCompletionLength": 100}
    problems = semantic_problems(
        job({**body, "spec": {**body["spec"], "rlhf": long}}), lambda k: known.get((k.kind, k.name))
    )
    assert [p.field for p in problems] == ["spec.rlhf.maxCompletionLength"]


@pytest.mark.parametrize(
    ("key", "managed"),
    [
        ("job-name", True),
        ("controller-uid", True),
        ("batch.kubernetes.io/job-name", True),
        ("kubernetes.io/metadata.name", True),
        ("node.k8s.io/x", True),
        ("forgeline.io/job", True),
        ("operator.forgeline.io/x", True),
        ("app.kubernetes.io/name", False),
        ("kueue.x-k8s.io/queue-name", False),
        ("example.com/team", False),
        ("team", False),
    ],
)
def test_managed_keys_are_kubernetes_and_forgeline_ones(key: str, managed: bool) -> None:
    assert managed_key(key) is managed


def test_a_reserved_label_fails_the_job_naming_it_and_no_pod_starts() -> None:
    body = job_body(labels={"controller-uid": "1234", "team": "nlp"})
    plan = decide(job(body), observed(body), SETTINGS)
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert "metadata.labels[controller-uid]" in failed["message"] and "labels[team]" not in failed["message"]
    assert plan.apply == []


def test_tool_annotations_are_not_the_users() -> None:
    annotations = {"kubectl.kubernetes.io/last-applied-configuration": "{}", "batch.kubernetes.io/x": "y"}
    assert [p.field for p in metadata_problems({}, annotations)] == ["metadata.annotations[batch.kubernetes.io/x]"]
    body = job_body(annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"})
    assert [o["kind"] for o in decide(job(body), observed(body), SETTINGS).apply] == ["ConfigMap", "Service", "Job"]


def test_forgeline_validate_runs_the_same_cross_job_and_metadata_checks(tmp_path: Path) -> None:
    base = job_body("PretrainJob", "base")
    aligned = job_body(
        "RLHFJob",
        "aligned",
        labels={"job-name": "x"},
        rlhf={"policy": from_job("PretrainJob", "base"), "rewardModel": {"uri": "s3://m/r"}, "maxCompletionLength": 64},
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump_all([base, aligned]))
    _, problems = validate_documents(load_documents(path))
    assert sorted(p.error.path for p in problems) == ["metadata.labels[job-name]", "spec.rlhf.maxCompletionLength"]
