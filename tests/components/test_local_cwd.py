"""Stages through torchx's `local_cwd` scheduler: 2 nodes x 1 process on gloo, for real.

torchx starts one process per node; each runs the operator's entrypoint (forgeline.jobs.launch)
with the operator's torchrun contract. What lands in the store must be what the operator's pods
and `forgeline run` commit: the same files, a manifest that verifies, lineage to the upstream.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forgeline.cli.main import main
from forgeline.jobs.storage import Storage, fetch, read_manifest
from forgeline.local.runner import run_pipeline_file
from tests.components.conftest import TINY_PIPELINE, tiny_jobs, write_stage_config

pytestmark = [pytest.mark.train, pytest.mark.timeout(600)]

PRETRAIN_DIR = "default/pretrainjob/tiny"
LORA_DIR = "default/lorajob/tiny-tuned"


def committed_files(root: Path) -> list[str]:
    """Every file under an artifact prefix, relative to it (the layout a reader sees)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def verified(uri: str, into: Path) -> tuple[list[str], str]:
    """Fetch the artifact, checking each file's size and sha256 against `_MANIFEST.json`."""
    manifest, digest = fetch(Storage(), uri, into)
    return sorted(e.path for e in manifest.files), digest


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def forgeline_run_pretrain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrain stage as `forgeline run` commits it: the layout to match."""
    workdir = tmp_path_factory.mktemp("forgeline-run")
    pipeline = workdir / "pretrain.yaml"
    pipeline.write_text(TINY_PIPELINE.read_text().split("\n---\n")[0])
    assert run_pipeline_file(pipeline, store=None, workdir=workdir, max_procs=2) == 0
    return workdir / "store" / PRETRAIN_DIR


def test_torchx_run_of_one_stage_commits_the_operators_layout(tmp_path: Path, forgeline_run_pretrain: Path) -> None:
    store = tmp_path / "store"
    config = write_stage_config(tiny_jobs()["pretrain"], store.as_uri(), tmp_path / "pretrain.json")
    torchx = Path(sys.executable).with_name("torchx")
    argv = [str(torchx), "run", "--wait", "-s", "local_cwd", "-cfg", f"log_dir={tmp_path / 'logs'}",
            "forgeline.components.stages:pretrain", "--config", str(config), "-j", "2x1",
            "--python", sys.executable, "--rdzv_port", str(free_port())]  # fmt: skip
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "logs").rglob("combined.log")))
    output = store / PRETRAIN_DIR
    assert (output / "_MANIFEST.json").is_file(), proc.stdout + proc.stderr + logs
    # Both nodes took part: one rendezvous, world size 2 (one RNG state per rank in the checkpoint).
    assert committed_files(output) == committed_files(forgeline_run_pretrain)
    assert any(name.endswith("rng-1.pt") for name in committed_files(output))
    files, _ = verified(output.as_uri(), tmp_path / "fetched")
    assert files == verified(forgeline_run_pretrain.as_uri(), tmp_path / "fetched-run")[0]
    manifest, _ = read_manifest(Storage(), output.as_uri())
    assert manifest.run["name"] == "tiny" and manifest.metrics["steps"] == 12
    assert manifest.metrics["final_loss"] < manifest.metrics["eval_loss_initial"]
    # Same config, same world size, same seed: the same training, whichever backend ran it.
    baseline, _ = read_manifest(Storage(), forgeline_run_pretrain.as_uri())
    assert manifest.metrics["final_loss"] == pytest.approx(baseline.metrics["final_loss"], rel=1e-6)


def test_pipeline_through_local_cwd_hands_the_committed_model_downstream(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["torchx", str(TINY_PIPELINE), "--scheduler", "local_cwd", "--workdir", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().out
    store = tmp_path / "store"
    base_files, base_digest = verified((store / PRETRAIN_DIR).as_uri(), tmp_path / "base")
    lora_files, _ = verified((store / LORA_DIR).as_uri(), tmp_path / "lora")
    assert "model.safetensors" in base_files and "model.safetensors" in lora_files
    # Lineage: the LoRA stage read exactly the pretrain artifact that was committed, by digest.
    lora, _ = read_manifest(Storage(), (store / LORA_DIR).as_uri())
    assert lora.inputs["model"] == {"uri": (store / PRETRAIN_DIR).as_uri(), "manifest_sha256": base_digest}
    # A rerun trusts the manifests: nothing runs twice.
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("output already committed") == 2 and "submitted" not in out
