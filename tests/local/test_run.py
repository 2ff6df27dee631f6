"""`forgeline run`: the local backend end to end, under real torchrun on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
  training: {maxSteps: STEPS, batchSize: 8, checkpointInterval: 10, logInterval: 5}
  resources: {nodes: 2, procsPerNode: 1, gpusPerNode: 0}
---
apiVersion: forgeline.io/v1alpha1
kind: LoRAJob
metadata: {name: tuned}
spec:
  model:
    fromJob: {kind: PretrainJob, name: base}
  data:
    synthetic: {examples: 200}
  training: {maxSteps: 10, batchSize: 8, logInterval: 5}
  resources: {nodes: 1, procsPerNode: 2, gpusPerNode: 0}
"""


def forgeline(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "forgeline.cli.main", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def write_pipeline(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.replace("STEPS", str(steps)))
    return path


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_pipeline_runs_in_order_then_a_rerun_skips_committed_stages(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, steps=20)
    first = forgeline("run", str(pipeline), "--workdir", "wd", cwd=tmp_path)
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    assert out.index("PretrainJob/base: attempt 1") < out.index("LoRAJob/tuned: attempt 1")
    assert "2/2 stage(s) done" in out
    store = tmp_path / "wd" / "store" / "default"
    for artifact in ("pretrainjob/base", "lorajob/tuned"):
        assert (store / artifact / "_MANIFEST.json").is_file()
    lora_manifest = json.loads((store / "lorajob/tuned/_MANIFEST.json").read_text())
    report = json.loads((tmp_path / "wd" / "report.json").read_text())
    base = next(s for s in report["stages"] if s["name"] == "base")
    assert base["digest"] in json.dumps(lora_manifest["inputs"]), "lineage names the exact upstream digest"
    assert (tmp_path / "wd" / "loss.png").stat().st_size > 1000

    second = forgeline("run", str(pipeline), "--workdir", "wd", cwd=tmp_path)
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out
    assert out.count("output committed by the same config") == 2
    assert "attempt 1" not in out

    # A changed setting is a different model: the stage runs again and says why, and its
    # downstream runs again because its input's digest changed. Never a stale skip.
    write_pipeline(tmp_path, steps=24)
    third = forgeline("run", str(pipeline), "--workdir", "wd", cwd=tmp_path)
    out, _ = third.communicate(timeout=600)
    assert third.returncode == 0, out
    assert "training.max_steps: 20 -> 24" in out
    assert "PretrainJob/base: attempt 1" in out and "LoRAJob/tuned: attempt 1" in out
    assert "model.digest" in out.split("LoRAJob/tuned: the committed output", 1)[1].split("\n", 1)[0]
    assert "skipped" not in out
    rerun = json.loads((store / "pretrainjob/base/_MANIFEST.json").read_text())
    assert rerun["config"]["training"]["max_steps"] == 24
    assert (
        '"event": "resumed"' not in (tmp_path / "wd" / "stages" / "pretrainjob-base" / "attempt1-node0.log").read_text()
    ), "a checkpoint of the 20-step config must not be resumed by the 24-step one"


def test_ctrl_c_stops_every_process_and_a_rerun_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, steps=100)
    run = forgeline("run", str(pipeline), "--workdir", "wd", cwd=tmp_path)
    assert run.stdout is not None
    seen = []
    deadline = time.monotonic() + 300
    for line in run.stdout:
        seen.append(line)
        if "checkpoint at step 20" in line or time.monotonic() > deadline:
            break
    assert any("checkpoint at step 20" in line for line in seen), "".join(seen)
    os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    rest, _ = run.communicate(timeout=60)
    assert run.returncode == 130, rest
    assert "rerun the same command to resume" in rest
    assert processes_mentioning(str(tmp_path / "wd")) == [], "no stage process outlives Ctrl-C"
    assert not (tmp_path / "wd/store/default/pretrainjob/base/_MANIFEST.json").exists()

    rerun = forgeline("run", str(pipeline), "--workdir", "wd", cwd=tmp_path)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out
    assert "PretrainJob/base: resumed from checkpoint at step" in out


def test_invalid_pipeline_is_refused_before_anything_runs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(PIPELINE.replace("metadata: {name: base}", "metadata: {name: basis}").replace("STEPS", "10"))
    run = forgeline("run", str(bad), "--workdir", "wd", cwd=tmp_path)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 1
    assert "LoRAJob/tuned: spec.model.fromJob: PretrainJob/base does not exist in namespace default" in out
    assert "Traceback" not in out
    assert not (tmp_path / "wd" / "stages").exists()
