"""training.lrScheduler, gradientCheckpointing and evalInterval: the schedule values, the trainer
mapping, checkpointing really on in the model, and evaluations at the interval in a real stage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from forgeline.jobs.contract import StageConfig, TrainingConfig, parse_config
from forgeline.jobs.loop import (
    HF_SCHEDULERS,
    MIN_LR_RATE,
    enable_gradient_checkpointing,
    eval_due,
    lr_lambda,
    trainer_common_args,
)
from forgeline.jobs.metrics import StageMetrics
from forgeline.jobs.runtime import Runtime
from forgeline.jobs.storage import Storage
from tests.jobs.conftest import StageRun, pretrain_config, rlhf_config, run_stage


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # warm-up 10 of 110 steps: (step + 1) / 10, then the shape over the remaining 100 steps
        ("cosine", {0: 0.1, 9: 1.0, 10: 1.0, 60: MIN_LR_RATE + (1 - MIN_LR_RATE) / 2, 110: MIN_LR_RATE}),
        ("linear", {0: 0.1, 9: 1.0, 10: 1.0, 35: 0.75, 60: 0.5, 110: 0.0}),
        ("constant", {0: 0.1, 4: 0.5, 10: 1.0, 60: 1.0, 110: 1.0}),
    ],
)
def test_lr_schedule_warms_up_then_follows_its_shape(kind: str, expected: dict[int, float]) -> None:
    f = lr_lambda(10, 110, kind)
    assert {step: f(step) for step in expected} == pytest.approx(expected)


@pytest.mark.parametrize("kind", sorted(HF_SCHEDULERS))
def test_trainer_stages_get_the_same_schedule_after_warmup(kind: str) -> None:
    from transformers import get_scheduler

    name, kwargs = HF_SCHEDULERS[kind]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=10, num_training_steps=110, scheduler_specific_kwargs=kwargs
    )
    ours = lr_lambda(10, 110, kind)
    for step in range(110):
        if step >= 10:
            assert scheduler.get_last_lr()[0] == pytest.approx(ours(step), abs=1e-9), (kind, step)
        optimizer.step()
        scheduler.step()


def test_eval_due_at_the_interval_only_during_training() -> None:
    assert [s for s in range(1, 61) if eval_due(s, 60, 20)] == [20, 40]  # 60: the final evaluation covers it
    assert not any(eval_due(s, 60, 0) for s in range(1, 61))  # 0: only before and after


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_gradient_checkpointing_is_enabled_through_a_peft_wrapper_and_keeps_gradients() -> None:
    from peft import LoraConfig, get_peft_model

    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
        assert enable_gradient_checkpointing(model) if checkpointing else True
        base = model.get_base_model()
        assert base.is_activation_checkpointing == checkpointing
        assert all(layer.gradient_checkpointing == checkpointing for layer in base.model.layers)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for plain, recomputed in zip(*grads, strict=True):
        assert torch.allclose(plain, recomputed, atol=1e-6)


def runtime(tmp_path: Path, stage: str, **training: Any) -> Runtime:
    cfg = StageConfig(stage=stage, output_uri=tmp_path.as_uri(), training=TrainingConfig(**training))  # type: ignore[arg-type]
    return Runtime(cfg, 0, 1, 0, torch.device("cpu"), "fp32", Storage(), tmp_path, StageMetrics(stage))


def test_trl_stages_get_checkpointing_and_the_schedule_as_trainer_arguments(tmp_path: Path) -> None:
    from trl import DPOConfig, RLOOConfig

    rt = runtime(tmp_path, "rlhf", gradient_checkpointing=True, lr_scheduler="linear", warmup_steps=3)
    for config_cls in (DPOConfig, RLOOConfig):  # trl's configs default checkpointing to True: ours must win
        args = config_cls(**trainer_common_args(rt, tmp_path / "hf", 50, 4))
        assert args.activation_checkpointing is True and args.gradient_checkpointing is True
        assert (str(args.lr_scheduler_type).split(".")[-1].lower(), args.warmup_steps) == ("linear", 3)
    off = runtime(tmp_path, "rlhf", gradient_checkpointing=False)
    args = DPOConfig(**trainer_common_args(off, tmp_path / "hf", 50, 4))
    assert args.activation_checkpointing is False
    assert str(args.lr_scheduler_type).split(".")[-1].lower() == "cosine_with_min_lr"
    assert args.lr_scheduler_kwargs == {"min_lr_rate": MIN_LR_RATE}


def test_eval_loss_is_a_stage_metric_and_reaches_the_job_status() -> None:
    from datetime import UTC, datetime

    from prometheus_client import generate_latest

    from forgeline.api.kinds import Progress
    from forgeline.operator.progress import parse_progress

    metrics = StageMetrics("lora")
    metrics.on_eval({"eval_loss": 1.25})
    assert metrics.registry.get_sample_value("forgeline_eval_loss", {"stage": "lora"}) == 1.25
    progress, _ = parse_progress(generate_latest(metrics.registry).decode(), datetime.now(UTC), None)
    assert progress["evalLoss"] == 1.25
    assert Progress.model_validate(progress).eval_loss == 1.25  # status.progress accepts it


def test_training_options_reach_the_contract_with_their_defaults() -> None:
    cfg = parse_config(pretrain_config("file:///tmp/out"))
    assert (cfg.training.lr_scheduler, cfg.training.gradient_checkpointing, cfg.training.eval_interval) == (
        "cosine",
        False,
        0,
    )


def test_pretrain_evaluates_at_the_interval_with_checkpointing_and_a_linear_schedule(tmp_path: Path) -> None:
    cfg = pretrain_config(
        (tmp_path / "out").as_uri(),
        max_steps=40,
        batch_size=16,
        warmup_steps=5,
        checkpoint_interval=0,
        log_interval=10,
        eval_interval=10,
        lr_scheduler="linear",
        gradient_checkpointing=True,
    )
    cfg["model_config"].update(layers=2, hidden_size=64, intermediate_size=128)
    cfg["data"]["synthetic"]["examples"] = 1500
    run = run_stage(tmp_path / "work", cfg)
    assert run.rc == 0, run.explain()
    m = run.metrics
    assert m["gradient_checkpointing"] is True  # read back from the model, not from the config
    evals = {e["step"]: e["metrics"]["eval_loss"] for e in run.of("progress") if "eval_loss" in e["metrics"]}
    assert sorted(evals) == [10, 20, 30, 40]
    history = {h["step"]: h["eval_loss"] for h in m["eval_history"]}
    assert history == {0: m["eval_loss_initial"], **evals}
    assert history[40] < history[10] < history[0]
    schedule = lr_lambda(5, 40, "linear")
    rates = {e["step"]: e["metrics"]["learning_rate"] for e in run.of("progress") if "learning_rate" in e["metrics"]}
    assert rates == pytest.approx({s: 0.003 * schedule(s) for s in (10, 20, 30, 40)})
    assert math.isclose(rates[40], 0.0, abs_tol=1e-12)


def test_rloo_evaluates_the_policy_at_the_interval_with_checkpointing(
    tmp_path: Path, pretrained: StageRun, reward_model: StageRun
) -> None:
    cfg = rlhf_config(
        (tmp_path / "policy").as_uri(), pretrained.config["output_uri"], reward_model.config["output_uri"]
    )
    cfg["training"].update(max_steps=20, eval_interval=10, checkpoint_interval=0, gradient_checkpointing=True)
    run = run_stage(tmp_path / "work", cfg)
    assert run.rc == 0, run.explain()
    m = run.metrics
    assert m["gradient_checkpointing"] is True
    during = [e["step"] for e in run.of("progress") if "eval_reward" in e["metrics"]]
    assert during == [10]  # at 20, the last step, the after-training evaluation is the one
    assert [h["step"] for h in m["eval_history"]] == [0, 10, 20]
    assert m["eval_history"][-1]["eval_reward"] == m["eval_after_reward"]
