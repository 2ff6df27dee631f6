"""Run the training stages for real: `torchrun` with 2 processes on gloo, through the launcher
that keeps the contract's exit codes.

The stages chain through session-scoped artifacts (pretrain once; reward, rlhf and lora reuse it)
so the whole suite stays a few minutes on 2 CPU cores. Configs here are the CPU-sized synthetic
task described in docs/stage-contract.md (tiny Llama-style models on generated data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

STAGE_TIMEOUT = 180  # seconds; the per-stage budget on 2 cores


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONSAFEPATH="1",
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    env.update(extra or {})
    return env


def launch_argv(stage: str, config: Path, nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "forgeline.jobs.launch",
        "--nproc-per-node",
        str(nproc),
        "--standalone",
        "-m",
        f"forgeline.jobs.{stage}",
        "--config",
        str(config),
    ]


@dataclass
class StageRun:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    config: dict[str, Any]
    termination: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def metrics(self) -> dict[str, Any]:
        (result,) = self.of("result")
        return dict(result["metrics"])

    def explain(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}"


def parse_events(stdout: str) -> list[dict[str, Any]]:
    events = []
    for line in stdout.splitlines():
        if line.startswith('{"event"'):
            events.append(json.loads(line))
    return events


def write_config(workdir: Path, cfg: dict[str, Any]) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    term = workdir / "termination-log"
    cfg = {**cfg, "observability": {**cfg.get("observability", {}), "termination_message_path": str(term)}}
    path = workdir / f"{cfg['stage']}.json"
    path.write_text(json.dumps(cfg))
    return path, term


def run_stage(
    workdir: Path, cfg: dict[str, Any], env: dict[str, str] | None = None, timeout: float = STAGE_TIMEOUT
) -> StageRun:
    path, term = write_config(workdir, cfg)
    started = time.monotonic()
    env = {"FORGELINE_SCRATCH": str(workdir / "scratch"), **(env or {})}
    proc = subprocess.run(
        launch_argv(cfg["stage"], path),
        capture_output=True,
        text=True,
        env=stage_env(env),
        timeout=timeout,
        start_new_session=True,
    )
    run = StageRun(
        proc.returncode,
        proc.stdout,
        proc.stderr,
        time.monotonic() - started,
        json.loads(path.read_text()),
        events=parse_events(proc.stdout),
    )
    if term.exists() and term.stat().st_size:
        run.termination = json.loads(term.read_text())
    return run


# ----------------------------------------------------------------------------- configs


def pretrain_config(output_uri: str, **training: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "stage": "pretrain",
        "output_uri": output_uri,
        "model_config": {
            "layers": 4,
            "hidden_size": 128,
            "heads": 4,
            "intermediate_size": 384,
            "vocab_size": 640,
            "context_length": 64,
        },
        "tokenizer": {"vocab_size": 640},
        "data": {"synthetic": {"kind": "corpus", "examples": 4000, "seed": 0}, "eval_fraction": 0.1},
        "training": {
            "max_steps": 120,
            "batch_size": 32,
            "learning_rate": 0.003,
            "checkpoint_interval": 40,
            "keep_checkpoints": 2,
            "log_interval": 10,
            "warmup_steps": 10,
            **training,
        },
    }


def reward_config(output_uri: str, base_uri: str) -> dict[str, Any]:
    return {
        "version": 1,
        "stage": "reward",
        "output_uri": output_uri,
        "model": {"uri": base_uri},
        "data": {"synthetic": {"kind": "preferences", "examples": 3000, "seed": 1}, "eval_fraction": 0.15},
        "training": {
            "epochs": 2,
            "max_steps": None,
            "batch_size": 32,
            "learning_rate": 0.001,
            "checkpoint_interval": 100,
            "log_interval": 10,
            "warmup_steps": 5,
        },
    }


def rlhf_config(output_uri: str, base_uri: str, rm_uri: str, algorithm: str = "rloo") -> dict[str, Any]:
    return {
        "version": 1,
        "stage": "rlhf",
        "output_uri": output_uri,
        "model": {"uri": base_uri},
        "data": {"synthetic": {"kind": "prompts", "examples": 2000, "seed": 3}, "eval_fraction": 0.25},
        "training": {
            "max_steps": 60,
            "batch_size": 16,
            "learning_rate": 0.0002,
            "checkpoint_interval": 30,
            "log_interval": 10,
        },
        "rlhf": {
            "algorithm": algorithm,
            "generations_per_prompt": 8,
            "max_completion_length": 16,
            "kl_beta": 0.02,
            "reward_model": {"uri": rm_uri},
        },
    }


def lora_config(output_uri: str, base_uri: str) -> dict[str, Any]:
    return {
        "version": 1,
        "stage": "lora",
        "output_uri": output_uri,
        "model": {"uri": base_uri},
        "data": {"synthetic": {"kind": "sft", "examples": 1500, "seed": 2}, "eval_fraction": 0.15},
        "training": {
            "epochs": 2,
            "max_steps": None,
            "batch_size": 32,
            "learning_rate": 0.005,
            "checkpoint_interval": 40,
            "log_interval": 10,
            "warmup_steps": 5,
        },
        "lora": {"r": 4, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "merge": True},
    }


# ----------------------------------------------------------------------------- chained artifacts


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


def _ok(run: StageRun) -> StageRun:
    assert run.rc == 0, run.explain()
    return run


@pytest.fixture(scope="session")
def pretrained(artifacts: Path) -> StageRun:
    return _ok(run_stage(artifacts / "work-pretrain", pretrain_config((artifacts / "base").as_uri())))


@pytest.fixture(scope="session")
def reward_model(artifacts: Path, pretrained: StageRun) -> StageRun:
    cfg = reward_config((artifacts / "rm").as_uri(), pretrained.config["output_uri"])
    return _ok(run_stage(artifacts / "work-reward", cfg))


@pytest.fixture(scope="session")
def rlhf_run(artifacts: Path, pretrained: StageRun, reward_model: StageRun) -> StageRun:
    cfg = rlhf_config(
        (artifacts / "policy").as_uri(), pretrained.config["output_uri"], reward_model.config["output_uri"]
    )
    return _ok(run_stage(artifacts / "work-rlhf", cfg))


@pytest.fixture(scope="session")
def lora_run(artifacts: Path, pretrained: StageRun) -> StageRun:
    cfg = lora_config((artifacts / "lora").as_uri(), pretrained.config["output_uri"])
    return _ok(run_stage(artifacts / "work-lora", cfg))
