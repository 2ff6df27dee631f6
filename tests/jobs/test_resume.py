"""A pretrain run killed with SIGKILL after its second checkpoint resumes from it and ends where an
uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.jobs.conftest import (
    STAGE_TIMEOUT,
    StageRun,
    launch_argv,
    parse_events,
    pretrain_config,
    run_stage,
    stage_env,
    write_config,
)

pytestmark = [pytest.mark.train, pytest.mark.timeout(900)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in body.splitlines():
        if line.startswith("forgeline_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def run_until_second_checkpoint_then_kill(workdir: Path, cfg: dict) -> tuple[list[dict], dict[str, float]]:
    """Start the stage, read its progress lines, scrape rank 0's metrics at the first checkpoint,
    SIGKILL the whole gang at the second."""
    path, _ = write_config(workdir, cfg)
    env = stage_env({"FORGELINE_SCRATCH": str(workdir / "scratch")})
    proc = subprocess.Popen(
        launch_argv("pretrain", path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + STAGE_TIMEOUT
    seen: list[str] = []
    metrics: dict[str, float] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at EOF if the run dies or finishes first
            seen.append(line)
            events = parse_events(line)
            if events and events[0]["event"] == "checkpoint" and events[0]["step"] == 40:
                metrics = scrape(cfg["observability"]["metrics_port"])
            if events and events[0]["event"] == "checkpoint" and events[0]["step"] == 80:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "no second checkpoint in time"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    events = parse_events("".join(seen))
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [40, 80], "".join(seen)
    return events, metrics


def test_sigkill_after_second_checkpoint_resumes_and_matches_uninterrupted(
    tmp_path: Path, pretrained: StageRun
) -> None:
    out = tmp_path / "out"
    cfg = pretrain_config(out.as_uri())
    cfg["observability"] = {"metrics_port": free_port()}
    killed, metrics = run_until_second_checkpoint_then_kill(tmp_path / "work", cfg)
    assert metrics['forgeline_train_step{stage="pretrain"}'] >= 40
    assert metrics['forgeline_train_tokens_total{stage="pretrain"}'] >= 40 * 32 * 64
    assert metrics['forgeline_checkpoint_bytes_total{stage="pretrain"}'] > 0
    assert metrics['forgeline_checkpoint_save_duration_seconds_count{stage="pretrain"}'] == 1
    assert 0 < metrics['forgeline_train_loss{stage="pretrain"}'] < 10
    assert not (out / "_MANIFEST.json").exists(), "a killed run never commits"
    assert not any(e["event"] == "result" for e in killed)

    resumed = run_stage(tmp_path / "work", cfg)
    assert resumed.rc == 0, resumed.explain()
    (event,) = resumed.of("resumed")
    assert event["step"] == 80 and event["checkpoint"].endswith("/checkpoints/step-80")
    assert resumed.of("progress")[0]["step"] == 80
    m, reference = resumed.metrics, pretrained.metrics
    assert m["resumed_from"] == 80
    assert abs(m["eval_loss_final"] - reference["eval_loss_final"]) <= 0.05 * reference["eval_loss_final"], (
        m,
        reference,
    )
    assert abs(m["final_loss"] - reference["final_loss"]) <= 0.05 * reference["final_loss"]
    assert m["eval_loss_initial"] == reference["eval_loss_initial"], "initial eval carried in the checkpoint"
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert manifest["metrics"]["resumed_from"] == 80


def test_rerun_of_a_committed_stage_reports_the_same_artifact(pretrained: StageRun, tmp_path: Path) -> None:
    """A retried pod whose previous attempt already committed does not train again."""
    again = run_stage(tmp_path, pretrained.config)
    assert again.rc == 0, again.explain()
    assert again.of("result")[0]["manifest_sha256"] == pretrained.of("result")[0]["manifest_sha256"]
    assert not again.of("progress")
