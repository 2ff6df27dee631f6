"""One stage's AppDef (forgeline.components.app): shapes, quantities, the config's way to each node,
and the credential check each node runs before anything else."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from torchx.runner import get_runner

from forgeline.components.app import STAGES, LaunchSettings, StageShape, cpu_count, memory_mb, stage_app


@pytest.mark.parametrize(("quantity", "cores"), [(None, 0), ("1", 1), ("4", 4), ("500m", 1), ("2500m", 3), ("1.5", 2)])
def test_cpu_quantities_become_whole_cores_rounded_up(quantity: str | None, cores: int) -> None:
    assert cpu_count(quantity) == cores


@pytest.mark.parametrize(
    ("quantity", "mib"), [(None, 0), ("16Gi", 16384), ("512Mi", 512), ("1G", 954), ("1048576", 1), ("1.5Gi", 1536)]
)
def test_memory_quantities_become_mebibytes_rounded_up(quantity: str | None, mib: int) -> None:
    assert memory_mb(quantity) == mib


def test_a_memory_quantity_the_scheduler_cannot_take_says_what_to_write() -> None:
    with pytest.raises(ValueError, match="16Gi or 512Mi"):
        memory_mb("16Q")


def test_a_gang_runs_at_most_one_process_per_gpu() -> None:
    with pytest.raises(ValueError, match="one process per GPU"):
        StageShape(nodes=1, procs=8, gpus=4)


def test_an_unknown_stage_is_refused_before_any_submission() -> None:
    with pytest.raises(ValueError, match="pretrain, reward, rlhf, lora"):
        stage_app({"stage": "distill"}, StageShape(), LaunchSettings(), name="x")


def replica_args(config: dict, settings: LaunchSettings, tmp_path: Path, nodes: int = 2) -> list[list[str]]:
    """What torchx's local scheduler would run on each node (macros filled in)."""
    app = stage_app(config, StageShape(nodes=nodes), settings, name="t")
    with get_runner() as runner:
        request = runner.dryrun(app, "local_cwd", cfg={"log_dir": str(tmp_path / "logs")}).request
    return [replica.args for replica in request.role_params["pretrain"]]


def test_the_config_reaches_every_node_unchanged_through_macro_substitution(tmp_path: Path) -> None:
    # torchx fills ${app_id}-style macros into arguments; a config must come through untouched.
    config = {"stage": "pretrain", "output_uri": "file:///s/$app_id/${replica_id}/$$/x"}
    for args in replica_args(config, LaunchSettings(), tmp_path):
        assert json.loads(args[-1]) == config


def test_a_node_stops_naming_the_missing_credential_before_starting(tmp_path: Path) -> None:
    settings = LaunchSettings(python="true", required_env=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    args = replica_args({"stage": "pretrain"}, settings, tmp_path, nodes=1)[0]
    assert args[0] == "bash"
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "AWS_ACCESS_KEY_ID": "x"}
    missing = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0
    assert "AWS_SECRET_ACCESS_KEY is not set on this node" in missing.stderr
    # With both set, the node goes on to the launcher ("true" here) and leaves the config behind.
    ready = subprocess.run(args, env={**env, "AWS_SECRET_ACCESS_KEY": "y"}, capture_output=True, timeout=30)
    assert ready.returncode == 0, ready.stderr
    (written,) = tmp_path.glob("forgeline-stage.*")
    assert json.loads(written.read_text()) == {"stage": "pretrain"}


def test_every_stage_has_a_torchx_component_with_documented_arguments() -> None:
    """`torchx run forgeline.components.stages:<stage>` exists for each stage the contract knows."""
    import inspect

    from forgeline.components import stages

    for stage in STAGES:
        component = getattr(stages, stage)
        assert inspect.getmodule(component) is stages, stage
        doc = inspect.getdoc(component) or ""
        for name in inspect.signature(component).parameters:
            assert f"{name}:" in doc, f"{stage}: torchx needs a docstring line for argument {name}"
