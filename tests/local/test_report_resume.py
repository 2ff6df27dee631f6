"""The local report across an interrupt, a resume and a skipped rerun: one whole curve, eval included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.train

PIPELINE = """
apiVersion: forgeline.io/v1alpha1
kind: PretrainJob
metadata: {name: base}
spec:
  model:
    config: {layers: 1, hiddenSize: 32, heads: 2, vocabSize: 512, contextLength: 32}
  data:
    synthetic: {examples: 400}
  training: {maxSteps: 60, batchSize: 8, checkpointInterval: 20, logInterval: 5, evalInterval: 20}
  resources: {nodes: 2, procsPerNode: 1, gpusPerNode: 0}
"""


def forgeline_run(pipeline: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "forgeline.cli.main", "run", str(pipeline), "--workdir", "wd"],
        cwd=cwd,
        env={**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def base_stage(tmp_path: Path) -> dict[str, Any]:
    report = json.loads((tmp_path / "wd" / "report.json").read_text())
    return next(s for s in report["stages"] if s["name"] == "base")


def test_report_keeps_the_curve_from_before_an_interrupt_and_after_a_skipped_rerun(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    run = forgeline_run(pipeline, tmp_path)
    assert run.stdout is not None
    seen = []
    deadline = time.monotonic() + 300
    for line in run.stdout:
        seen.append(line)
        if "checkpoint at step 20" in line or time.monotonic() > deadline:
            break
    assert any("checkpoint at step 20" in line for line in seen), "".join(seen)
    os.killpg(run.pid, signal.SIGINT)
    rest, _ = run.communicate(timeout=60)
    assert run.returncode == 130, rest

    resumed = forgeline_run(pipeline, tmp_path)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resumed from checkpoint at step" in out
    base = base_stage(tmp_path)
    assert [step for step, _ in base["curve"]] == list(range(5, 61, 5)), "steps before the interrupt are kept"
    assert [step for step, _ in base["eval_curve"]] == [0, 20, 40, 60]
    assert base["metrics"]["eval_history"][0]["step"] == 0, "the resumed stage kept its earlier evaluations"

    skipped = forgeline_run(pipeline, tmp_path)
    out, _ = skipped.communicate(timeout=120)
    assert skipped.returncode == 0 and "skipped" in out, out
    again = base_stage(tmp_path)
    assert again["state"] == "Skipped"
    assert (again["curve"], again["eval_curve"], again["metrics"]) == (
        base["curve"],
        base["eval_curve"],
        base["metrics"],
    )
