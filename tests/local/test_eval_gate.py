"""`forgeline run` with an EvalJob and quality gates: the gated stages wait for the EvalJob, then
the one whose condition holds runs and the one whose condition fails never starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
  training: {maxSteps: 10, batchSize: 8, logInterval: 5}
  resources: {nodes: 1, procsPerNode: 2, gpusPerNode: 0}
---
apiVersion: forgeline.io/v1alpha1
kind: EvalJob
metadata: {name: compare}
spec:
  models:
  - {name: base, fromJob: {kind: PretrainJob, name: base}}
  baseline: base
  bestOfN: [1, 2]
  data:
    synthetic: {examples: 400}
    prompts: 8
  generation: {maxNewTokens: 8}
  resources: {nodes: 1, procsPerNode: 2, gpusPerNode: 0}
---
apiVersion: forgeline.io/v1alpha1
kind: LoRAJob
metadata: {name: lenient}
spec:
  model:
    fromJob: {kind: PretrainJob, name: base}
  gate: {evalJob: compare, condition: "trueReward(base) > -1"}
  data:
    synthetic: {examples: 100}
  training: {maxSteps: 4, batchSize: 8, logInterval: 2}
  resources: {nodes: 1, procsPerNode: 1, gpusPerNode: 0}
---
apiVersion: forgeline.io/v1alpha1
kind: LoRAJob
metadata: {name: strict}
spec:
  model:
    fromJob: {kind: PretrainJob, name: base}
  gate: {evalJob: compare, condition: "trueReward(base) >= 0.9"}
  data:
    synthetic: {examples: 100}
  training: {maxSteps: 4, batchSize: 8, logInterval: 2}
  resources: {nodes: 1, procsPerNode: 1, gpusPerNode: 0}
"""


def test_gate_runs_the_stage_whose_condition_holds_and_fails_the_other_without_running_it(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "forgeline.cli.main", "run", str(pipeline), "--workdir", "wd"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # one stage failed: its gate
    assert out.index("EvalJob/compare: attempt 1") < out.index("LoRAJob/lenient: attempt 1")
    assert "LoRAJob/lenient: gate passed: EvalJob/compare: trueReward(base) > -1 holds" in out
    assert "LoRAJob/strict: attempt" not in out
    failed = next(line for line in out.splitlines() if line.startswith("LoRAJob/strict failed:"))
    assert "GateFailed" in failed and "trueReward(base) >= 0.9 does not hold: trueReward(base) = " in failed
    store = tmp_path / "wd" / "store" / "default"
    results = json.loads((store / "evaljob" / "compare" / "results.json").read_text())
    assert results["models"]["base"]["trueReward"]["n"] == 8
    assert "EvalJob/compare: 8 held-out prompts x 2 samples, baseline base" in out  # the summary's table
    assert (store / "lorajob" / "lenient" / "_MANIFEST.json").is_file()
    assert not (store / "lorajob" / "strict").exists()
