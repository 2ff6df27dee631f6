"""The stage config built from each example job passes the training side's own contract check."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeline.api.kinds import Job
from forgeline.api.manifests import load_documents
from forgeline.api.stageconfig import ResolvedInput, output_uri, stage_config_dict
from forgeline.api.validate import parse_job
from forgeline.jobs.contract import parse_config

EXAMPLE = Path(__file__).parents[2] / "examples" / "pipeline.yaml"


def example_jobs() -> dict[str, Job]:
    jobs = [parse_job(d.body) for d in load_documents(EXAMPLE)]
    return {j.kind: j for j in jobs}


INPUTS = {
    "PretrainJob": {},
    "RewardModelJob": {"model": ResolvedInput("file:///store/base", "sha256:" + "a" * 64)},
    "RLHFJob": {
        "policy": ResolvedInput("file:///store/base", "sha256:" + "a" * 64),
        "rewardModel": ResolvedInput("file:///store/judge", "sha256:" + "b" * 64),
    },
    "LoRAJob": {"model": ResolvedInput("file:///store/base", None)},
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_stage_config_round_trips_through_the_contract(kind: str) -> None:
    job = example_jobs()[kind]
    raw = stage_config_dict(job, attempt=2, output=output_uri("file:///store", job), inputs=INPUTS[kind])
    parsed = parse_config(raw)
    assert parsed.stage == job.stage
    assert parsed.run.attempt == 2
    assert parsed.output_uri == f"file:///store/default/{kind.lower()}/{job.metadata.name}"
    assert parsed.data.synthetic is not None


def test_rlhf_config_carries_policy_and_reward_model_digests() -> None:
    job = example_jobs()["RLHFJob"]
    parsed = parse_config(stage_config_dict(job, attempt=1, output="file:///o", inputs=INPUTS["RLHFJob"]))
    assert parsed.model is not None and parsed.model.uri == "file:///store/base"
    assert parsed.rlhf is not None and parsed.rlhf.reward_model.uri == "file:///store/judge"
    assert parsed.training.learning_rate == 2e-4


def test_from_scratch_pretrain_has_architecture_and_no_input_model() -> None:
    parsed = parse_config(stage_config_dict(example_jobs()["PretrainJob"], attempt=1, output="file:///o", inputs={}))
    assert parsed.model is None
    assert parsed.model_config is not None and parsed.model_config.hidden_size == 64
    assert parsed.tokenizer.vocab_size == 512


def test_spec_batch_is_per_process_and_the_contract_batch_is_global() -> None:
    job = example_jobs()["PretrainJob"]  # batchSize 8, 2 nodes x 1 process
    assert parse_config(stage_config_dict(job, attempt=1, output="file:///o", inputs={})).training.batch_size == 16
    local = stage_config_dict(job, attempt=1, output="file:///o", inputs={}, world_size=1)
    assert parse_config(local).training.batch_size == 8, "a capped local run keeps the per-process batch"
