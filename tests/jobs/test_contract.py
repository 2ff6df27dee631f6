"""The stage contract: exit codes under real torchrun, strict config parsing, result summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgeline.api.stageconfig import stage_config_dict
from forgeline.api.validate import parse_job
from forgeline.jobs import contract
from forgeline.jobs.contract import ConfigError, parse_config
from forgeline.jobs.launch import exit_code_for
from tests.jobs.conftest import pretrain_config, reward_config, run_stage


@pytest.mark.train
def test_missing_input_manifest_exits_3_naming_the_uri(tmp_path: Path) -> None:
    missing = tmp_path / "never-committed"
    missing.mkdir()
    (missing / "model.safetensors").write_bytes(b"half an upload")
    cfg = reward_config((tmp_path / "out").as_uri(), missing.as_uri())
    run = run_stage(tmp_path / "work", cfg)
    assert run.rc == contract.EXIT_MISSING_INPUT, run.explain()
    assert missing.as_uri() in run.stderr
    assert run.termination is not None and missing.as_uri() in run.termination["error"]
    assert run.termination["exit_code"] == 3


@pytest.mark.train
def test_malformed_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    cfg = pretrain_config((tmp_path / "out").as_uri(), batch_size="sixteen")
    run = run_stage(tmp_path / "work", cfg)
    assert run.rc == contract.EXIT_BAD_CONFIG, run.explain()
    assert "training.batch_size" in run.stderr
    assert run.termination is not None and "training.batch_size" in run.termination["error"]
    assert not (tmp_path / "out").exists()


@pytest.mark.train
def test_config_error_found_by_the_workers_still_exits_2(tmp_path: Path) -> None:
    """Divisibility by the world size is only known inside the gang: worker exit 2 -> launcher exit 2."""
    cfg = pretrain_config((tmp_path / "out").as_uri(), batch_size=30, gradient_accumulation=2)
    cfg["data"]["synthetic"]["examples"] = 300
    run = run_stage(tmp_path / "work", cfg)
    assert run.rc == contract.EXIT_BAD_CONFIG, run.explain()
    assert "training.batch_size" in run.stderr and "world size 2" in run.stderr
    assert run.termination is not None and run.termination["exit_code"] == 2


@pytest.mark.train
def test_checkpoint_interval_zero_trains_without_periodic_checkpoints_and_commits(tmp_path: Path) -> None:
    """`checkpointInterval: 0` (documented "0 disables") goes from a manifest through the real launcher."""
    job = parse_job(
        {
            "apiVersion": "forgeline.io/v1alpha1",
            "kind": "PretrainJob",
            "metadata": {"name": "no-ckpt"},
            "spec": {
                "model": {"config": {"layers": 1, "hiddenSize": 32, "heads": 2, "vocabSize": 320, "contextLength": 32}},
                "data": {"synthetic": {"examples": 200}},
                "training": {"maxSteps": 6, "batchSize": 4, "checkpointInterval": 0, "logInterval": 2},
                "resources": {"gpusPerNode": 0, "procsPerNode": 2},
            },
        }
    )
    out = tmp_path / "out"
    cfg = stage_config_dict(job, attempt=1, output=out.as_uri(), inputs={})
    assert cfg["training"]["checkpoint_interval"] == 0
    run = run_stage(tmp_path / "work", cfg)
    assert run.rc == contract.EXIT_OK, run.explain()
    assert run.of("checkpoint") == []
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert (out / contract.MANIFEST_NAME).exists(), "the final model is still committed"
    assert run.metrics["steps"] == 6


def base() -> dict:
    return pretrain_config("file:///tmp/out")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: c["training"].update(batch_size=-1), "training.batch_size"),
        (lambda c: c["training"].update(bacth_size=4), "training.bacth_size"),
        (lambda c: c["model_config"].update(heads=3), "model_config.heads"),
        (lambda c: c.update(model={"uri": "file:///x"}), "model"),
        (lambda c: c.update(output_uri="/no/scheme"), "output_uri"),
        (lambda c: c["data"].update(uri="file:///d"), "data"),
        (lambda c: c["data"]["synthetic"].update(kind="poetry"), "data.synthetic.kind"),
        (lambda c: c["training"].update(precision="fp8"), "training.precision"),
        (lambda c: c.update(version=2), "version"),
        (lambda c: c.update(lora={"r": 4}), "lora"),
        (lambda c: c.pop("output_uri"), "output_uri"),
        (lambda c: c["data"].update(eval_fraction=1.0), "data.eval_fraction"),
        (lambda c: c["training"].update(checkpoint_interval=True), "training.checkpoint_interval"),
    ],
)
def test_config_errors_name_the_field(mutate, field: str) -> None:
    cfg = base()
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert err.value.field_path == field
    assert f"'{field}'" in str(err.value)
    assert err.value.exit_code == 2


def test_rlhf_grpo_needs_a_positive_kl_beta() -> None:
    cfg = {
        "version": 1,
        "stage": "rlhf",
        "output_uri": "file:///o",
        "model": {"uri": "file:///m"},
        "data": {"synthetic": {"kind": "prompts"}},
        "rlhf": {"algorithm": "grpo", "kl_beta": 0, "reward_model": {"uri": "file:///rm"}},
    }
    with pytest.raises(ConfigError, match=r"rlhf\.kl_beta"):
        parse_config(cfg)
    cfg["rlhf"]["kl_beta"] = 0.02
    assert parse_config(json.dumps(cfg)).rlhf is not None


def test_config_round_trips_through_json() -> None:
    parsed = parse_config(base())
    assert parse_config(json.dumps(parsed.to_dict())) == parsed


def test_result_summary_stays_within_4kb() -> None:
    metrics = {f"metric_{i}": "x" * 100 for i in range(100)} | {"final_loss": 1.5}
    body = contract.result_summary("s3://b/p", "ab" * 32, metrics)
    assert len(body) <= 4096
    summary = json.loads(body)
    assert summary["metrics"]["final_loss"] == 1.5 and summary["manifest_sha256"] == "ab" * 32


def test_launcher_keeps_permanent_exit_codes() -> None:
    assert exit_code_for([2, 1]) == 2
    assert exit_code_for([1, 3]) == 3
    assert exit_code_for([-9, 1]) == 1
    assert exit_code_for([0, 0]) == 0
