"""DPO (`rlhf.algorithm: dpo`) for real: torchrun with 2 processes on the synthetic preference pairs,
whose hidden true reward says whether the policy itself got better, not only its ranking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import STAGE_TIMEOUT, StageRun, run_stage


def dpo_config(output_uri: str, base_uri: str) -> dict[str, Any]:
    return {
        "version": 1,
        "stage": "rlhf",
        "output_uri": output_uri,
        "model": {"uri": base_uri},
        "data": {"synthetic": {"kind": "preferences", "examples": 3000, "seed": 1}, "eval_fraction": 0.15},
        "training": {
            "max_steps": 40,
            "batch_size": 16,
            "learning_rate": 5e-4,
            "checkpoint_interval": 20,
            "log_interval": 10,
            "eval_interval": 20,
        },
        "rlhf": {"algorithm": "dpo", "kl_beta": 0.1, "max_completion_length": 16},
    }


@pytest.fixture(scope="module")
def dpo_run(artifacts: Path, pretrained: StageRun) -> StageRun:
    cfg = dpo_config((artifacts / "dpo").as_uri(), pretrained.config["output_uri"])
    run = run_stage(artifacts / "work-dpo", cfg)
    assert run.rc == 0, run.explain()
    return run


def test_dpo_raises_heldout_preference_accuracy_and_hidden_true_reward(dpo_run: StageRun) -> None:
    m = dpo_run.metrics
    print(json.dumps({k: v for k, v in m.items() if k.startswith("eval_")}, indent=1))  # the figures, with -s
    # The reference is the starting policy: every implicit reward is 0 before training, a tie for every pair.
    assert m["eval_before_preference_accuracy"] == 0.5, m
    assert m["eval_after_preference_accuracy"] >= 0.85, m
    gain = m["eval_after_true_reward"] - m["eval_before_true_reward"]
    se = (m["eval_after_true_reward_se"] ** 2 + m["eval_before_true_reward_se"] ** 2) ** 0.5
    assert gain > 0.2 and gain > 4 * se, m
    assert m["eval_after_real_word_share"] >= 0.95, m  # better sentiment, not gibberish
    assert m["eval_loss_final"] < m["eval_loss_initial"], m
    assert dpo_run.seconds < STAGE_TIMEOUT


def test_dpo_reports_eval_loss_at_every_eval_interval(dpo_run: StageRun) -> None:
    during = [e["step"] for e in dpo_run.of("progress") if "eval_loss" in (e.get("metrics") or {})]
    assert during == [0, 20, 40]
    history = dpo_run.metrics["eval_history"]
    assert [h["step"] for h in history] == [0, 20, 40]
    assert history[0]["eval_loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference
    assert history[-1]["eval_loss"] < history[1]["eval_loss"] < history[0]["eval_loss"]


def test_dpo_reads_no_reward_model_and_commits_a_plain_causal_lm(dpo_run: StageRun) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(dpo_run.config["output_uri"].removeprefix("file://"))
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert set(manifest["inputs"]) == {"model"}, manifest["inputs"]  # the policy, also the reference
    assert manifest["config"]["rlhf"]["reward_model"] is None
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids = tokenizer("<|user|> describe the cat<|assistant|>", return_tensors="pt", add_special_tokens=False)
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
