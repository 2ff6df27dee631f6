"""The stages as torchx components: `torchx run forgeline.components.stages:pretrain --config FILE`.

Each component takes one stage config (the JSON `forgeline run` writes and the operator puts in a
ConfigMap; a local path or any fsspec URI), checks it as the stage will, and returns the AppDef of
components/app.py. `forgeline torchx PIPELINE.yaml` builds the same AppDefs from a manifest.

No `from __future__ import annotations` here: torchx reads these signatures at run time to build
each component's command line, and wants real types, not strings.
"""

import json

import fsspec
from torchx import specs
from torchx.components.dist import parse_nnodes

from forgeline.api.torchrun import CREDENTIAL_ENV, MASTER_PORT
from forgeline.api.torchrun import DEFAULT_TRAINER_IMAGE as DEFAULT_IMAGE
from forgeline.components.app import (
    ENV_CREDENTIALS,
    LaunchSettings,
    StageShape,
    stage_app,
)
from forgeline.jobs.contract import parse_config


def settings_for(
    *,
    image: str,
    python: str,
    rdzv_port: int,
    env: dict[str, str] | None,
    storage_credentials: str | None,
    max_retries: int = 0,
) -> LaunchSettings:
    """`storage_credentials`: a Kubernetes secret's name, or "env" (the submitting environment)."""
    secret = storage_credentials if storage_credentials and storage_credentials != ENV_CREDENTIALS else None
    return LaunchSettings(
        image=image,
        python=python,
        rdzv_port=rdzv_port,
        env=dict(env or {}),
        env_secret=secret,
        required_env=CREDENTIAL_ENV if storage_credentials else (),
        max_retries=max_retries,
    )


def _component(
    stage: str,
    config: str,
    *,
    j: str,
    gpu: int,
    cpu: int,
    memMB: int,
    image: str,
    python: str,
    rdzv_port: int,
    storage_credentials: str | None,
    env: dict[str, str] | None,
    max_retries: int,
) -> specs.AppDef:
    with fsspec.open(config, "rb") as fh:
        raw = json.loads(fh.read())
    parsed = parse_config(raw)  # ConfigError names the field, as the stage would
    if parsed.stage != stage:
        raise ValueError(
            f"{config}: the config is for stage {parsed.stage!r}; use forgeline.components.stages:{parsed.stage}"
        )
    min_nodes, nodes, procs, _ = parse_nnodes(j)
    if min_nodes != nodes:
        raise ValueError(f"-j {j}: stages need a fixed gang (NODESxPROCS), not an elastic range")
    settings = settings_for(
        image=image, python=python, rdzv_port=rdzv_port, env=env,
        storage_credentials=storage_credentials, max_retries=max_retries,
    )  # fmt: skip
    shape = StageShape(nodes=nodes, procs=procs, gpus=gpu, cpu=cpu, mem_mb=memMB)
    return stage_app(raw, shape, settings, name=f"{stage}-{parsed.run.name}")


def pretrain(
    config: str,
    j: str = "1x1",
    gpu: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    image: str = DEFAULT_IMAGE,
    python: str = "python",
    rdzv_port: int = MASTER_PORT,
    storage_credentials: str | None = None,
    env: dict[str, str] | None = None,
    max_retries: int = 0,
) -> specs.AppDef:
    """Pretrain a language model (forgeline.jobs.pretrain) on NODES x PROCS workers.

    Args:
        config: the stage config (JSON, stage "pretrain"): a local path or an fsspec URI
        j: NODESxPROCS: nodes and processes per node (one process per GPU)
        gpu: GPUs per node (0: CPU training on gloo)
        cpu: CPUs per node (0: the scheduler's default)
        memMB: memory per node in MiB (0: the scheduler's default)
        image: the trainer image (Kubernetes; Slurm and local run the current environment)
        python: the interpreter that has forgeline installed, on every node
        rdzv_port: the rendezvous port on node 0
        storage_credentials: a Kubernetes secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
            (referenced, never read), or "env" to require both in the submitting environment
        env: extra environment variables (plain values; never credentials)
        max_retries: scheduler-level retries of the whole gang
    """
    return _component(
        "pretrain", config, j=j, gpu=gpu, cpu=cpu, memMB=memMB, image=image, python=python,
        rdzv_port=rdzv_port, storage_credentials=storage_credentials, env=env, max_retries=max_retries,
    )  # fmt: skip


def reward(
    config: str,
    j: str = "1x1",
    gpu: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    image: str = DEFAULT_IMAGE,
    python: str = "python",
    rdzv_port: int = MASTER_PORT,
    storage_credentials: str | None = None,
    env: dict[str, str] | None = None,
    max_retries: int = 0,
) -> specs.AppDef:
    """Train a reward model (forgeline.jobs.reward) on preference pairs, NODES x PROCS workers.

    Args:
        config: the stage config (JSON, stage "reward"): a local path or an fsspec URI
        j: NODESxPROCS: nodes and processes per node (one process per GPU)
        gpu: GPUs per node (0: CPU training on gloo)
        cpu: CPUs per node (0: the scheduler's default)
        memMB: memory per node in MiB (0: the scheduler's default)
        image: the trainer image (Kubernetes; Slurm and local run the current environment)
        python: the interpreter that has forgeline installed, on every node
        rdzv_port: the rendezvous port on node 0
        storage_credentials: a Kubernetes secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
            (referenced, never read), or "env" to require both in the submitting environment
        env: extra environment variables (plain values; never credentials)
        max_retries: scheduler-level retries of the whole gang
    """
    return _component(
        "reward", config, j=j, gpu=gpu, cpu=cpu, memMB=memMB, image=image, python=python,
        rdzv_port=rdzv_port, storage_credentials=storage_credentials, env=env, max_retries=max_retries,
    )  # fmt: skip


def rlhf(
    config: str,
    j: str = "1x1",
    gpu: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    image: str = DEFAULT_IMAGE,
    python: str = "python",
    rdzv_port: int = MASTER_PORT,
    storage_credentials: str | None = None,
    env: dict[str, str] | None = None,
    max_retries: int = 0,
) -> specs.AppDef:
    """RLHF a policy against a reward model (forgeline.jobs.rlhf), NODES x PROCS workers.

    Args:
        config: the stage config (JSON, stage "rlhf"): a local path or an fsspec URI
        j: NODESxPROCS: nodes and processes per node (one process per GPU)
        gpu: GPUs per node (0: CPU training on gloo)
        cpu: CPUs per node (0: the scheduler's default)
        memMB: memory per node in MiB (0: the scheduler's default)
        image: the trainer image (Kubernetes; Slurm and local run the current environment)
        python: the interpreter that has forgeline installed, on every node
        rdzv_port: the rendezvous port on node 0
        storage_credentials: a Kubernetes secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
            (referenced, never read), or "env" to require both in the submitting environment
        env: extra environment variables (plain values; never credentials)
        max_retries: scheduler-level retries of the whole gang
    """
    return _component(
        "rlhf", config, j=j, gpu=gpu, cpu=cpu, memMB=memMB, image=image, python=python,
        rdzv_port=rdzv_port, storage_credentials=storage_credentials, env=env, max_retries=max_retries,
    )  # fmt: skip


def lora(
    config: str,
    j: str = "1x1",
    gpu: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    image: str = DEFAULT_IMAGE,
    python: str = "python",
    rdzv_port: int = MASTER_PORT,
    storage_credentials: str | None = None,
    env: dict[str, str] | None = None,
    max_retries: int = 0,
) -> specs.AppDef:
    """LoRA-tune a model (forgeline.jobs.lora) on SFT data, NODES x PROCS workers.

    Args:
        config: the stage config (JSON, stage "lora"): a local path or an fsspec URI
        j: NODESxPROCS: nodes and processes per node (one process per GPU)
        gpu: GPUs per node (0: CPU training on gloo)
        cpu: CPUs per node (0: the scheduler's default)
        memMB: memory per node in MiB (0: the scheduler's default)
        image: the trainer image (Kubernetes; Slurm and local run the current environment)
        python: the interpreter that has forgeline installed, on every node
        rdzv_port: the rendezvous port on node 0
        storage_credentials: a Kubernetes secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
            (referenced, never read), or "env" to require both in the submitting environment
        env: extra environment variables (plain values; never credentials)
        max_retries: scheduler-level retries of the whole gang
    """
    return _component(
        "lora", config, j=j, gpu=gpu, cpu=cpu, memMB=memMB, image=image, python=python,
        rdzv_port=rdzv_port, storage_credentials=storage_credentials, env=env, max_retries=max_retries,
    )  # fmt: skip


def eval(  # torchx names a component after its function (`stages:eval`), shadowing the builtin here
    config: str,
    j: str = "1x1",
    gpu: int = 0,
    cpu: int = 0,
    memMB: int = 0,
    image: str = DEFAULT_IMAGE,
    python: str = "python",
    rdzv_port: int = MASTER_PORT,
    storage_credentials: str | None = None,
    env: dict[str, str] | None = None,
    max_retries: int = 0,
) -> specs.AppDef:
    """Evaluate and compare models (forgeline.jobs.eval): win rates, ratings, best-of-N, NODES x PROCS workers.

    Args:
        config: the stage config (JSON, stage "eval"): a local path or an fsspec URI
        j: NODESxPROCS: nodes and processes per node (one process per GPU)
        gpu: GPUs per node (0: CPU on gloo)
        cpu: CPUs per node (0: the scheduler's default)
        memMB: memory per node in MiB (0: the scheduler's default)
        image: the trainer image (Kubernetes; Slurm and local run the current environment)
        python: the interpreter that has forgeline installed, on every node
        rdzv_port: the rendezvous port on node 0
        storage_credentials: a Kubernetes secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
            (referenced, never read), or "env" to require both in the submitting environment
        env: extra environment variables (plain values; never credentials)
        max_retries: scheduler-level retries of the whole gang
    """
    return _component(
        "eval", config, j=j, gpu=gpu, cpu=cpu, memMB=memMB, image=image, python=python,
        rdzv_port=rdzv_port, storage_credentials=storage_credentials, env=env, max_retries=max_retries,
    )  # fmt: skip
