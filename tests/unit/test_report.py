"""The local report: curves rebuilt from the persisted events across interrupts and resumes, eval
curves, the reward plot for real data and for DPO, and a skipped rerun that still has its figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from forgeline.local.report import (
    EVENTS_FILE,
    StageRecord,
    append_event,
    read_events,
    restore_curves,
    write_report,
)


def progress(step: int, loss: float | None = None, **metrics: Any) -> dict[str, Any]:
    return {"event": "progress", "stage": "pretrain", "step": step, "total": 40, "loss": loss, "metrics": metrics}


def record(stage: str = "pretrain", **metrics: Any) -> StageRecord:
    return StageRecord("PretrainJob", "base", stage, "file:///out", state="Succeeded", metrics=metrics)


def test_curve_keeps_the_steps_before_an_interrupt_and_takes_the_resumed_replay(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    first_run = [progress(0, eval_loss_initial=6.0), progress(10, 5.0), progress(20, 4.0), progress(30, 3.5)]
    for event in first_run:  # killed after step 30; its checkpoint was at step 20
        append_event(path, "cfg-a", event)
    append_event(path, "cfg-a", {"event": "checkpoint", "step": 20})  # not a curve point, not kept
    append_event(path, "cfg-other", progress(10, 9.9))  # another config's run in the same stage dir
    for event in [progress(30, 3.4), progress(40, 3.0), progress(40, eval_loss=2.9)]:  # the resume replays 21..
        append_event(path, "cfg-a", event)
    with path.open("a") as fh:
        fh.write('{"fingerprint": "cfg-a", "event": "progr')  # a line torn by the kill

    r = record()
    restore_curves(r, read_events(path, "cfg-a"), "loss")
    assert r.curve == [(10, 5.0), (20, 4.0), (30, 3.4), (40, 3.0)]
    assert r.eval_curve == [(0, 6.0), (40, 2.9)]


def test_eval_curve_falls_back_to_the_committed_eval_history(tmp_path: Path) -> None:
    history = [{"step": 0, "eval_loss": 6.0}, {"step": 20, "eval_loss": 4.0}, {"step": 40, "eval_loss": 3.0}]
    r = record(eval_history=history)
    restore_curves(r, read_events(tmp_path / EVENTS_FILE, "cfg-a"), "loss")  # no events file (another workdir)
    assert r.curve == [] and r.eval_curve == [(0, 6.0), (20, 4.0), (40, 3.0)]


def test_reward_plot_for_real_data_draws_the_reward_model_score_alone(tmp_path: Path) -> None:
    rlhf = record("rlhf", eval_before_reward=0.1, eval_after_reward=0.9, eval_before_reward_se=0.05)
    write_report([rlhf], tmp_path)
    assert (tmp_path / "reward.png").stat().st_size > 0
    assert not (tmp_path / "loss.png").exists()  # no curve, no plot


def test_report_has_no_reward_plot_without_an_rlhf_evaluation(tmp_path: Path) -> None:
    write_report([record(eval_loss_initial=6.0, eval_loss_final=3.0)], tmp_path)
    assert not (tmp_path / "reward.png").exists()


def test_dpo_key_metric_is_preference_accuracy_and_its_curve_the_loss(tmp_path: Path) -> None:
    dpo = record(
        "rlhf",
        algorithm="dpo",
        eval_before_preference_accuracy=0.5,
        eval_after_preference_accuracy=0.95,
        eval_before_true_reward=0.01,
        eval_after_true_reward=0.59,
    )
    assert dpo.key_metric() == "preference accuracy 0.5 -> 0.95"
    path = tmp_path / EVENTS_FILE
    append_event(path, "f", {"event": "progress", "step": 10, "loss": 0.6, "metrics": {"rewards/accuracies": 0.8}})
    restore_curves(dpo, read_events(path, "f"), "loss")
    assert dpo.curve == [(10, 0.6)]
    report = write_report([dpo], tmp_path)
    assert (tmp_path / "reward.png").exists() and (tmp_path / "loss.png").exists()
    (saved,) = json.loads(report.read_text())["stages"]
    assert saved["curve"] == [[10, 0.6]]


def test_rloo_eval_curve_is_the_heldout_reward_from_before_to_after(tmp_path: Path) -> None:
    path = tmp_path / EVENTS_FILE
    for event in (
        {"event": "progress", "step": 0, "loss": None, "metrics": {"eval_before_reward": 0.1}},
        {"event": "progress", "step": 10, "loss": 0.0, "metrics": {"reward": 0.3}},
        {"event": "progress", "step": 10, "loss": None, "metrics": {"eval_reward": 0.35}},
        {"event": "progress", "step": 20, "loss": None, "metrics": {"eval_reward": 0.6}},
    ):
        append_event(path, "f", event)
    r = record("rlhf", algorithm="rloo")
    restore_curves(r, read_events(path, "f"), "reward")
    assert r.curve == [(10, 0.3)] and r.eval_curve == [(0, 0.1), (10, 0.35), (20, 0.6)]
