"""The live progress line of `forgeline run` and the summary's key metric."""

from __future__ import annotations

from forgeline.local.progress import ProgressLine
from forgeline.local.report import StageRecord, curve_point


def test_progress_line_shows_step_loss_throughput_and_eta() -> None:
    line = ProgressLine("PretrainJob/base")
    line.render({"event": "progress", "step": 10, "total": 110}, now=100.0)
    text = line.render({"event": "progress", "step": 20, "total": 110, "loss": 3.14159, "tokens_per_s": 12345.6}, 110.0)
    assert text == "PretrainJob/base  step 20/110  loss 3.1416  12,346 tok/s  ETA 1:30"


def test_rlhf_shows_and_plots_reward_not_its_near_zero_loss() -> None:
    event = {"event": "progress", "step": 5, "total": 60, "loss": 1e-9, "metrics": {"reward": 4.5}}
    assert "reward 4.5000" in ProgressLine("RLHFJob/aligned", "reward").render(event, 0.0)
    assert curve_point("rlhf", event) == (5, 4.5)
    assert curve_point("pretrain", {**event, "loss": 2.0}) == (5, 2.0)
    assert curve_point("pretrain", {"event": "checkpoint", "step": 5}) is None


def test_key_metric_is_the_stage_effect_before_and_after() -> None:
    record = StageRecord("RewardModelJob", "judge", "reward", "file:///o", state="Succeeded",
                         metrics={"eval_accuracy_initial": 0.5, "eval_accuracy_final": 0.98})  # fmt: skip
    assert record.key_metric() == "eval accuracy 0.5 -> 0.98"
    failed = StageRecord("LoRAJob", "tuned", "lora", "file:///o", state="Failed", reason="exit 3: input missing")
    assert failed.key_metric() == "exit 3: input missing"
