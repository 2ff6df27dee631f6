"""The EvalJob kind: validation, CRD, chain resolution and its stage config through the contract."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from forgeline.api.chain import JobKey, resolve
from forgeline.api.crd import crd_for
from forgeline.api.stageconfig import ResolvedInput, stage_config_dict
from forgeline.api.validate import InvalidManifest, parse_job
from forgeline.jobs.contract import ConfigError, parse_config

EVAL: dict[str, Any] = {
    "apiVersion": "forgeline.io/v1alpha1",
    "kind": "EvalJob",
    "metadata": {"name": "compare"},
    "spec": {
        "models": [
            {"name": "base", "fromJob": {"kind": "PretrainJob", "name": "base"}},
            {"name": "aligned", "uri": "s3://store/default/rlhfjob/aligned"},
        ],
        "rewardModel": {"fromJob": {"name": "judge"}},
        "baseline": "base",
        "bestOfN": [1, 4],
        "data": {"synthetic": {"seed": 3}},
    },
}
INPUTS = {
    "models.base": ResolvedInput("s3://store/base", "sha256:" + "a" * 64),
    "models.aligned": ResolvedInput("s3://store/default/rlhfjob/aligned", "sha256:" + "b" * 64),
    "judge": ResolvedInput("s3://store/judge", "sha256:" + "c" * 64),
}


def with_spec(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(EVAL)
    body["spec"].update(changes)
    return body


def refused_at(body: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidManifest) as refused:
        parse_job(body)
    return [e.path for e in refused.value.errors]


def test_baseline_must_name_one_of_the_models() -> None:
    assert "spec.baseline" in refused_at(with_spec(baseline="tuned"))


def test_model_names_must_be_unique() -> None:
    twice = [{"name": "base", "uri": "s3://m/a"}, {"name": "base", "uri": "s3://m/b"}]
    assert "spec.models" in refused_at(with_spec(models=twice))


@pytest.mark.parametrize("best_of", [[0], [65], []])
def test_best_of_n_values_are_bounded(best_of: list[int]) -> None:
    assert any(p.startswith("spec.bestOfN") for p in refused_at(with_spec(bestOfN=best_of)))


def test_crd_carries_the_rules_the_category_and_the_printer_columns() -> None:
    crd = crd_for("EvalJob")
    assert crd["spec"]["names"]["categories"] == ["llmjobs"] and crd["spec"]["names"]["plural"] == "evaljobs"
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "self.models.exists(m, m.name == self.baseline)" in rules
    assert {"rule": "self == oldSelf"}.items() <= spec["properties"]["models"]["x-kubernetes-validations"][0].items()
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert columns == crd_for("PretrainJob")["spec"]["versions"][0]["additionalPrinterColumns"]  # one table


def test_eval_job_waits_for_its_models_and_judge_and_refuses_a_reward_model_as_a_model() -> None:
    job = parse_job(EVAL)
    chain = resolve([job], existing=[JobKey("PretrainJob", "base"), JobKey("RewardModelJob", "judge")])
    assert chain.upstreams(JobKey("EvalJob", "compare")) == [
        JobKey("PretrainJob", "base"),
        JobKey("RewardModelJob", "judge"),
    ]
    assert not chain.problems
    wrong = with_spec(models=[{"name": "base", "fromJob": {"kind": "PretrainJob", "name": "base"}}])
    wrong["spec"]["rewardModel"] = {"fromJob": {"kind": "RewardModelJob", "name": "compare-judge"}}
    problems = resolve([parse_job(wrong)]).problems
    assert [(p.code, p.field) for p in problems] == [
        ("missing", "spec.models[base].fromJob"),
        ("missing", "spec.rewardModel.fromJob"),
    ]


def test_stage_config_carries_every_model_and_the_judge_through_the_contract() -> None:
    cfg = parse_config(stage_config_dict(parse_job(EVAL), attempt=1, output="s3://store/o", inputs=INPUTS))
    assert cfg.stage == "eval" and cfg.model is None and cfg.eval is not None
    assert [(m.name, m.digest) for m in cfg.eval.models] == [
        ("base", "sha256:" + "a" * 64),
        ("aligned", "sha256:" + "b" * 64),
    ]
    assert cfg.eval.reward_model is not None and cfg.eval.reward_model.uri == "s3://store/judge"
    assert (cfg.eval.best_of_n, cfg.eval.baseline, cfg.eval.prompts) == ([1, 4], "base", 64)
    assert cfg.data.synthetic is not None and cfg.data.synthetic.seed == 3


def test_contract_refuses_an_eval_config_whose_baseline_is_not_a_model() -> None:
    raw = stage_config_dict(parse_job(EVAL), attempt=1, output="s3://store/o", inputs=INPUTS)
    raw["eval"]["baseline"] = "tuned"
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.field_path == "eval.baseline"
