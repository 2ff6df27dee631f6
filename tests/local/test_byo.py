"""The bring-your-own-model example end to end: examples/byo/make_checkpoint.py builds a plain HF
checkpoint and chat data, `forgeline run examples/byo/pipeline.yaml` LoRA-tunes it, trains a
reward model on it and runs DPO, and every output loads with plain transformers/peft elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testbed.hfload import load_in_fresh_process

from forgeline.jobs import storage as st

pytestmark = [pytest.mark.train, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_ROOT = "file:///tmp/forgeline-byo"  # where the example's pipeline expects make_checkpoint's output


def run(argv: list[str], cwd: Path, timeout: float) -> str:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_byo_example_tunes_a_plain_hf_checkpoint_three_ways_and_the_outputs_load_anywhere(tmp_path: Path) -> None:
    data = tmp_path / "byo"
    run([sys.executable, str(REPO / "examples/byo/make_checkpoint.py"), str(data)], tmp_path, 300)
    pipeline_text = (REPO / "examples/byo/pipeline.yaml").read_text()
    assert EXAMPLE_ROOT in pipeline_text
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(pipeline_text.replace(EXAMPLE_ROOT, data.as_uri()))  # the same pipeline, this test's data
    out = run([sys.executable, "-m", "forgeline.cli.main", "run", str(pipeline), "--workdir", "wd"], tmp_path, 800)
    assert "3/3 stage(s) done" in out, out

    store = tmp_path / "wd" / "store" / "default"
    model_uri = (data / "model").as_uri()
    _, plain_digest = st.read_manifest(st.Storage(), model_uri)
    manifests = {
        name: json.loads((store / name / "_MANIFEST.json").read_text())
        for name in ("lorajob/chat-tuned", "rewardmodeljob/judge", "rlhfjob/preferred")
    }
    for name in ("lorajob/chat-tuned", "rewardmodeljob/judge"):
        assert manifests[name]["inputs"]["model"] == {"uri": model_uri, "manifest_sha256": plain_digest}, name
        # the runner hashed the directory too and pinned the stage to that digest: the same one
        assert manifests[name]["config"]["model"] == {"uri": model_uri, "digest": f"sha256:{plain_digest}"}, name
    # The local summary and report.json carry the same lineage, the plain directory's digest included.
    assert f"LoRAJob/chat-tuned model: {model_uri} sha256:{plain_digest[:12]}" in out, out
    report = json.loads((tmp_path / "wd" / "report.json").read_text())
    judge = next(r for r in report["stages"] if r["name"] == "judge")
    assert judge["inputs"]["model"] == {"uri": model_uri, "digest": f"sha256:{plain_digest}"}
    dpo = manifests["rlhfjob/preferred"]
    assert dpo["inputs"]["model"]["uri"].endswith("lorajob/chat-tuned")
    for name, manifest in manifests.items():
        print(name, {k: v for k, v in manifest["metrics"].items() if isinstance(v, float)})

    loaded = load_in_fresh_process(
        [
            {"path": str(store / "lorajob/chat-tuned"), "kind": "lm", "base": model_uri},
            {"path": str(store / "rewardmodeljob/judge"), "kind": "reward", "base": model_uri},
            {"path": str(store / "rlhfjob/preferred"), "kind": "lm", "base": model_uri},
        ],
        tmp_path,
    )
    assert len(loaded) == 4 and all(n >= 1 for n in loaded.values()), loaded
