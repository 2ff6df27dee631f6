"""Each stage does real, measurable work under torchrun (2 processes, gloo) and commits its artifact."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from tests.jobs.conftest import STAGE_TIMEOUT, StageRun, rlhf_config, run_stage

pytestmark = [pytest.mark.train, pytest.mark.timeout(900)]


def local(uri: str) -> Path:
    assert uri.startswith("file://")
    return Path(uri[len("file://") :])


def test_pretrain_heldout_loss_falls_at_least_40_percent(pretrained: StageRun) -> None:
    m = pretrained.metrics
    assert m["eval_loss_final"] <= 0.6 * m["eval_loss_initial"], m
    assert pretrained.seconds < STAGE_TIMEOUT


def test_pretrain_commits_manifest_last_with_sizes_and_digests(pretrained: StageRun) -> None:
    out = local(pretrained.config["output_uri"])
    manifest_bytes = (out / "_MANIFEST.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    listed = {f["path"]: f for f in manifest["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(listed), "tokenizer travels with the model"
    for path, entry in listed.items():
        blob = (out / path).read_bytes()
        assert len(blob) == entry["size"] and hashlib.sha256(blob).hexdigest() == entry["sha256"], path
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    (result,) = pretrained.of("result")
    assert result["manifest_sha256"] == digest
    assert pretrained.termination == {
        "output_uri": pretrained.config["output_uri"],
        "manifest_sha256": digest,
        "metrics": result["metrics"],
    }
    assert len(json.dumps(pretrained.termination)) <= 4096


def test_pretrain_keeps_last_k_checkpoints_each_with_manifest(pretrained: StageRun) -> None:
    ckpts = local(pretrained.config["output_uri"]) / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-40", "step-80"]  # 120 is the final model
    for step in ckpts.iterdir():
        files = {f["path"] for f in json.loads((step / "_MANIFEST.json").read_text())["files"]}
        assert files == {"state.pt", "rng-0.pt", "rng-1.pt"}
    steps = [e["step"] for e in pretrained.of("progress")]
    assert steps == sorted(steps) and steps[-1] == 120


def test_reward_model_heldout_pairwise_accuracy_at_least_090(reward_model: StageRun, pretrained: StageRun) -> None:
    m = reward_model.metrics
    assert m["eval_accuracy_final"] >= 0.90, m
    assert m["eval_accuracy_initial"] < 0.7, "an untrained head should be near chance"
    manifest = json.loads((local(reward_model.config["output_uri"]) / "_MANIFEST.json").read_text())
    assert manifest["inputs"]["model"]["manifest_sha256"] == pretrained.of("result")[0]["manifest_sha256"]
    assert reward_model.seconds < STAGE_TIMEOUT


def test_rlhf_raises_reward_model_score_and_hidden_true_reward(rlhf_run: StageRun) -> None:
    m = rlhf_run.metrics
    lift = m["eval_after_reward"] - m["eval_before_reward"]
    se = math.hypot(m["eval_after_reward_se"], m["eval_before_reward_se"])
    assert lift > 3 * se, m
    assert m["eval_after_true_reward"] > m["eval_before_true_reward"] + 2 * math.hypot(
        m["eval_after_true_reward_se"], m["eval_before_true_reward_se"]
    ), m
    assert m["eval_after_real_word_share"] >= 0.9, "reward hacking into gibberish"
    assert any("kl" in e["metrics"] for e in rlhf_run.of("progress")), "the KL to the reference is reported"
    assert rlhf_run.seconds < STAGE_TIMEOUT


def test_rlhf_policy_gain_holds_under_an_independent_evaluation(
    rlhf_run: StageRun, pretrained: StageRun, reward_model: StageRun
) -> None:
    """Fresh sampling seed and the artifacts as committed: not the trainer's own numbers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgeline.jobs import data
    from forgeline.jobs.reward import load_reward_model
    from forgeline.jobs.scoring import RewardScorer, evaluate_policy

    torch.set_num_threads(2)
    rm_dir = local(reward_model.config["output_uri"])
    rm_tok = AutoTokenizer.from_pretrained(rm_dir)
    scorer = RewardScorer(load_reward_model(rm_dir, "rm", rm_tok.pad_token_id), rm_tok, torch.device("cpu"))
    prompts = [data.prompt_text(t, n) for t in range(len(data.TEMPLATES)) for n in data.NOUNS[::3]]
    results = {}
    for name, run in (("base", pretrained), ("policy", rlhf_run)):
        path = local(run.config["output_uri"])
        policy = AutoModelForCausalLM.from_pretrained(path)
        results[name] = evaluate_policy(
            policy, AutoTokenizer.from_pretrained(path), scorer, prompts, 4, 16, seed=12345, device=torch.device("cpu")
        ).summary(name)
    base, policy = results["base"], results["policy"]
    assert policy["policy_true_reward"] > base["base_true_reward"] + 0.05, results
    assert policy["policy_reward"] > base["base_reward"], results
    assert policy["policy_real_word_share"] >= 0.9, results


def test_lora_trains_under_one_percent_and_cuts_target_loss(lora_run: StageRun) -> None:
    m = lora_run.metrics
    assert m["trainable_fraction"] < 0.01, m
    assert m["eval_loss_final"] <= 0.7 * m["eval_loss_initial"], m
    assert m["merge_max_logit_diff"] < 1e-4, m
    out = local(lora_run.config["output_uri"])
    assert {p.name for p in (out / "adapter").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
    }
    assert lora_run.seconds < STAGE_TIMEOUT


def test_lora_merged_model_logits_equal_adapter_model(lora_run: StageRun, pretrained: StageRun) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, base = local(lora_run.config["output_uri"]), local(pretrained.config["output_uri"])
    tok = AutoTokenizer.from_pretrained(out)
    # the adapter is applied onto the base named explicitly: adapter_config's path is the training pod's
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tok(
        ["<|user|> weather for the cat<|assistant|> forecast for the cat brings rain"],
        return_tensors="pt",
        add_special_tokens=False,
    )["input_ids"]
    with torch.no_grad():
        gap = (adapted(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max().item()
        moved = adapted(input_ids=ids).logits - AutoModelForCausalLM.from_pretrained(base)(input_ids=ids).logits
    assert gap < 1e-4
    assert moved.abs().max().item() > 1e-2, "the adapter changed the model"


def test_rlhf_grpo_option_trains_with_a_kl_penalty(
    artifacts: Path, pretrained: StageRun, reward_model: StageRun
) -> None:
    cfg = rlhf_config(
        (artifacts / "policy-grpo").as_uri(),
        pretrained.config["output_uri"],
        reward_model.config["output_uri"],
        algorithm="grpo",
    )
    cfg["training"].update(max_steps=30, log_interval=10, checkpoint_interval=100)
    run = run_stage(artifacts / "work-grpo", cfg)
    assert run.rc == 0, run.explain()
    m = run.metrics
    assert m["algorithm"] == "grpo"
    assert all(e["metrics"].get("kl", 0) > 0 for e in run.of("progress")[1:]), "beta > 0: a reference model"
    assert m["eval_after_reward"] > m["eval_before_reward"], m
    assert run.seconds < STAGE_TIMEOUT
