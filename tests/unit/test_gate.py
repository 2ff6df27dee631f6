"""Quality gates: the condition language, and the operator holding or releasing a gated stage on
its EvalJob's recorded metrics (decide(), the real policies, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from testbed.builders import Obj, job, job_body, observed

from forgeline.api.chain import JobKey, resolve
from forgeline.api.gate import Gate, GateError, check, evaluate, parse_condition
from forgeline.api.validate import InvalidManifest, parse_job
from forgeline.operator.decide import decide
from forgeline.operator.render import RenderSettings

SETTINGS = RenderSettings(store="s3://store")
RECORDED = {"winRate.base": 0.5, "winRate.aligned": 0.71, "rating.base": 1000.0, "rating.aligned": 1152.0}


@pytest.mark.parametrize(
    "text",
    [
        "winRate(aligned, base) >= 0.6",
        "rating(aligned)>=1050",
        "rmScore(aligned) > rmScore(base)",
        "trueReward(a) < -0.5",
    ],
)
def test_conditions_of_the_grammar_parse_and_print_back(text: str) -> None:
    parsed = parse_condition(text)
    assert parse_condition(str(parsed)) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "winRate(aligned) >= 0.6",  # win rate takes two models
        "rating(aligned, base) > 1000",
        "accuracy(aligned) > 0.5",
        "0.6 <= winRate(aligned, base)",
        "rating(aligned) >= 1050 and rating(base) < 900",
        "__import__('os').system('true')",
        "rating(Aligned) > 1",
    ],
)
def test_anything_outside_the_grammar_is_refused_by_parser_and_api(text: str) -> None:
    with pytest.raises(GateError, match="not a condition"):
        parse_condition(text)
    body = job_body("LoRAJob", "tuned", gate={"evalJob": "compare", "condition": text})
    with pytest.raises(InvalidManifest) as refused:
        parse_job(body)
    assert "spec.gate.condition" in [e.path for e in refused.value.errors]


def test_win_rates_are_read_against_the_baseline_either_way_round() -> None:
    assert evaluate(parse_condition("winRate(aligned, base) >= 0.7"), RECORDED, "base").passed
    assert not evaluate(parse_condition("winRate(base, aligned) >= 0.3"), RECORDED, "base").passed  # 1 - 0.71
    assert evaluate(parse_condition("rating(aligned) > rating(base)"), RECORDED, "base").passed


def test_a_condition_the_result_cannot_answer_fails_the_gate_saying_why() -> None:
    missing = check(Gate(eval_job="compare", condition="rating(tuned) > 1000"), RECORDED, "base")
    assert not missing.passed and "no rating.tuned" in missing.message and "aligned, base" in missing.message
    with pytest.raises(GateError, match="against the EvalJob's baseline"):
        evaluate(parse_condition("winRate(aligned, tuned) > 0.5"), {"winRate.tuned": 0.6, **RECORDED}, "base")


def test_the_gate_eval_job_is_an_upstream_of_the_gated_stage() -> None:
    gated = job(
        job_body(
            "LoRAJob", "tuned", model={"uri": "s3://m/b"}, gate={"evalJob": "compare", "condition": "rating(a) > 1"}
        )
    )
    chain = resolve([gated])
    assert chain.upstreams(JobKey("LoRAJob", "tuned")) == [JobKey("EvalJob", "compare")]
    assert [p.code for p in chain.problems] == ["missing"] and chain.problems[0].field == "spec.gate.evalJob"


# -- the operator: held until the EvalJob succeeds, then failed or released ---------------------


def gated(condition: str) -> Obj:
    return job_body(
        "LoRAJob", "tuned", model={"uri": "s3://m/base"}, gate={"evalJob": "compare", "condition": condition}
    )


def eval_job(state: str, metrics: dict[str, float] | None = None) -> Obj:
    body = job_body(
        "EvalJob", "compare", models=[{"name": "base", "uri": "s3://m/b"}, {"name": "aligned", "uri": "s3://m/a"}],
        baseline="base",
    )  # fmt: skip
    body["spec"].pop("model")  # job_body's default input; an EvalJob has models instead
    body["status"] = {"state": state}
    if metrics is not None:
        body["status"]["output"] = {"uri": "s3://store/default/evaljob/compare", "metrics": metrics}
    return body


def one_pass(body: Obj, upstream: Obj) -> Any:
    return decide(job(body), observed(body, upstreams={"gate": upstream}), SETTINGS)


def condition_of(plan: Any, type_: str) -> Obj:
    return next(c for c in plan.status["conditions"] if c["type"] == type_)


def test_gated_stage_waits_while_its_eval_job_runs() -> None:
    plan = one_pass(gated("winRate(aligned, base) >= 0.6"), eval_job("Running"))
    assert plan.status["state"] == "Waiting" and not plan.apply
    assert "EvalJob/compare" in condition_of(plan, "InputsReady")["message"]


def test_gate_holds_the_stage_and_fails_it_when_the_condition_fails() -> None:
    plan = one_pass(gated("winRate(aligned, base) >= 0.8"), eval_job("Succeeded", RECORDED))
    assert plan.status["state"] == "Failed" and not plan.apply
    failed = condition_of(plan, "Failed")
    assert failed["reason"] == "GateFailed"
    assert "winRate(aligned, base) = 0.71" in failed["message"] and ">= 0.8 does not hold" in failed["message"]


def test_gate_releases_the_stage_when_the_condition_holds() -> None:
    plan = one_pass(gated("winRate(aligned, base) >= 0.6"), eval_job("Succeeded", RECORDED))
    assert plan.status["state"] != "Failed"
    assert [o["kind"] for o in plan.apply if o["kind"] == "Job"] == ["Job"]
    assert ("Normal", "GatePassed") in [(t, r) for t, r, _ in plan.events]
    assert {"role": "gate", "kind": "EvalJob", "name": "compare"}.items() <= plan.status["inputs"][-1].items()


def test_gate_naming_a_model_the_eval_job_lacks_fails_without_a_pod() -> None:
    plan = one_pass(gated("rating(tuned) >= 1000"), eval_job("Succeeded", RECORDED))
    assert condition_of(plan, "Failed")["reason"] == "GateFailed" and not plan.apply


@pytest.mark.parametrize(
    ("condition", "judged", "problem"),
    [
        ("rating(tuned) > 1000", True, "the EvalJob evaluates no model 'tuned' (its models: base, aligned)"),
        ("winRate(aligned, aligned) > 0.4", True, None),
        ("rmScore(aligned) > 0", False, "has no rewardModel, so it records no rmScore"),
        ("trueReward(aligned) > 0.1", False, None),
        ("rating(aligned) > rating(base)", True, None),
    ],
)
def test_validate_refuses_a_gate_its_eval_job_in_the_same_file_could_never_answer(
    condition: str, judged: bool, problem: str | None
) -> None:
    evaluator = eval_job("Created")
    evaluator.pop("status")
    if judged:
        evaluator["spec"]["rewardModel"] = {"uri": "s3://m/judge"}
    problems = resolve([job(gated(condition)), job(evaluator)]).problems
    found = [(p.code, p.field, p.message) for p in problems]
    assert found == ([("gate", "spec.gate.condition", found[0][2])] if problem else []), found
    assert problem is None or problem in found[0][2]
