"""Precision and trainer settings come from the hardware, never from library defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgeline.jobs.contract import ConfigError, parse_config
from tests.jobs.conftest import pretrain_config, rlhf_config


def test_auto_precision_on_cpu_is_fp32_and_fp16_needs_a_gpu() -> None:
    import torch

    from forgeline.jobs.runtime import pick_precision

    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu) == "fp32"
    assert pick_precision("bf16", cpu) == "bf16"  # asked for explicitly: honoured
    with pytest.raises(ConfigError, match=r"training\.precision"):
        pick_precision("fp16", cpu)


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_rlhf_trainer_settings_override_trl_gpu_defaults_on_cpu(tmp_path: Path, algorithm: str) -> None:
    """trl defaults to bf16 and gradient checkpointing; on a CPU both must be off."""
    import torch

    from forgeline.jobs.metrics import StageMetrics
    from forgeline.jobs.rlhf import trainer_args
    from forgeline.jobs.runtime import Runtime
    from forgeline.jobs.storage import Storage

    cfg = parse_config(rlhf_config("file:///o", "file:///m", "file:///rm", algorithm=algorithm))
    rt = Runtime(cfg, 0, 2, 0, torch.device("cpu"), "fp32", Storage(), tmp_path, StageMetrics("rlhf"))
    args = trainer_args(rt, tmp_path / "hf", total=60)
    assert (args.bf16, args.fp16, args.use_cpu, args.gradient_checkpointing) == (False, False, True, False)
    assert args.per_device_train_batch_size == 8 and args.num_generations == 8
    assert args.beta == pytest.approx(0.02) and args.max_completion_length == 16


def test_batch_size_must_split_over_ranks_and_generations(tmp_path: Path) -> None:
    import torch

    from forgeline.jobs.metrics import StageMetrics
    from forgeline.jobs.rlhf import trainer_args
    from forgeline.jobs.runtime import Runtime
    from forgeline.jobs.storage import Storage

    raw = rlhf_config("file:///o", "file:///m", "file:///rm")
    raw["training"]["batch_size"] = 12  # divisible by 2 ranks, not by 8 generations
    rt = Runtime(parse_config(raw), 0, 2, 0, torch.device("cpu"), "fp32", Storage(), tmp_path, StageMetrics("rlhf"))
    with pytest.raises(ConfigError, match=r"training\.batch_size"):
        trainer_args(rt, tmp_path, total=10)
    assert parse_config(pretrain_config("file:///o")).training.batch_size == 32
