"""One stage as a torchx AppDef, pure: a stage config + a gang shape -> one `dist.torchrun`-style role.

Each replica is one node. It runs the same entrypoint the operator's pods run,
`python -m forgeline.jobs.launch -m forgeline.jobs.<stage> --config FILE`, with the same torchrun
contract (forgeline.api.torchrun): PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the replica id),
PET_MASTER_ADDR/PORT (a static rendezvous on replica 0) and PET_RDZV_ID (the scheduler's app id).
The launcher runs torchrun in-process, so a bad config (2) or a missing input (3) reaches the
scheduler as itself, not as torchrun's blanket 1.

The stage config travels inside the command, not as a file the nodes must share: a short shell
prologue writes it to a temporary file on each node. Slurm clusters usually share a filesystem,
Kubernetes pods never do; one mechanism serves both and the dry run shows exactly what runs.
The config holds no secret (storage credentials never enter it), so this is safe to print.

Credentials pass by name only. On Kubernetes each node's container gets `envFrom` the named secret
(a pod overlay: torchx's Role has no field for references, and an overlay of `env` would replace
torchx's own variables); elsewhere (Slurm, local) the scheduler hands the submitting environment to
the job. Either way the prologue stops, naming the variable, when a required one is missing,
before torch loads. No credential value is ever read here.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, get_args

from torchx import specs
from torchx.specs.overlays import JOIN, set_overlay

from forgeline.api.stageconfig import Stage
from forgeline.api.torchrun import DEFAULT_TRAINER_IMAGE as DEFAULT_IMAGE
from forgeline.api.torchrun import (
    MASTER_PORT,
    NCCL_DEFAULTS,
    PET_MASTER_ADDR,
    PET_MASTER_PORT,
    PET_NNODES,
    PET_NODE_RANK,
    PET_NPROC_PER_NODE,
    PET_RDZV_ID,
)

STAGES: tuple[str, ...] = get_args(Stage)
# In place of a secret's name: the credentials come from the submitting environment, by name.
ENV_CREDENTIALS = "env"

_RANK0 = "@RANK0_ENV@"
_SUFFIX = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@dataclass(frozen=True)
class StageShape:
    """What the scheduler must allocate: nodes x processes, and per node GPUs, CPUs, memory."""

    nodes: int = 1
    procs: int = 1
    gpus: int = 0
    cpu: int = 0  # 0: the scheduler's default
    mem_mb: int = 0

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.procs < 1:
            raise ValueError(f"a gang needs at least 1 node x 1 process, not {self.nodes}x{self.procs}")
        if self.gpus and self.procs > self.gpus:
            raise ValueError(f"{self.procs} processes per node but {self.gpus} GPUs: one process per GPU")


@dataclass(frozen=True)
class LaunchSettings:
    """How this site runs stages: the image, its interpreter, the rendezvous port, extra env."""

    image: str = DEFAULT_IMAGE
    python: str = "python"
    rdzv_port: int = MASTER_PORT
    env: dict[str, str] = field(default_factory=dict)  # plain values: nothing secret
    env_secret: str | None = None  # Kubernetes: a secret whose keys become variables (by reference)
    required_env: tuple[str, ...] = ()  # must be set where the job runs (checked by name)
    max_retries: int = 0


def cpu_count(quantity: str | None) -> int:
    """A Kubernetes CPU quantity ("4", "500m") as whole cores, rounded up; None -> 0 (unset)."""
    if not quantity:
        return 0
    if quantity.endswith("m"):
        return math.ceil(int(quantity[:-1]) / 1000)
    return math.ceil(float(quantity))


def memory_mb(quantity: str | None) -> int:
    """A Kubernetes memory quantity ("16Gi", "512M") in MiB, rounded up; None -> 0 (unset)."""
    if not quantity:
        return 0
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", quantity)
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"memory {quantity!r}: expected a quantity such as 16Gi or 512Mi")
    return math.ceil(float(match.group(1)) * _SUFFIX[match.group(2)] / 2**20)


def prologue(stage: str, settings: LaunchSettings) -> str:
    """The shell each node runs: write the config ($1), point at rank 0, exec the launcher.

    Returned with every "$" doubled, as torchx's macro substitution (string.Template) expects for a
    literal one, except in the one macro it must fill: the variable holding replica 0's host.
    """
    checks = [
        f': "${{{name}:?forgeline: {name} is not set on this node; credentials pass by name only: export it '
        f'where the job is submitted (Slurm, local) or name a secret that holds it (Kubernetes)}}"'
        for name in settings.required_env
    ]
    launch = [settings.python, "-m", "forgeline.jobs.launch", "-m", f"forgeline.jobs.{stage}"]
    script = "\n".join(
        [
            "set -eu",
            *checks,
            'config="$(mktemp "${TMPDIR:-/tmp}/forgeline-stage.XXXXXX")"',
            'printf \'%s\' "$1" > "$config"',
            # torchx names the variable that holds replica 0's host (it differs per scheduler).
            f'export {PET_MASTER_ADDR}="${{{_RANK0}:-localhost}}"',
            f'exec {shlex.join(launch)} --config "$config"',
        ]
    )
    return script.replace("$", "$$").replace(_RANK0, specs.macros.rank0_env)


def stage_app(config: dict[str, Any], shape: StageShape, settings: LaunchSettings, *, name: str) -> specs.AppDef:
    """The AppDef for one stage; `config` is the stage config (forgeline.api.stageconfig) as a dict."""
    stage = config.get("stage")
    if stage not in STAGES:
        raise ValueError(f"config field 'stage' is {stage!r}; expected one of {', '.join(STAGES)}")
    config_text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    env = {
        # NCCL defaults on GPUs (a dead peer raises instead of hanging the gang), as the operator sets them;
        # the user's own values win, the torchrun contract wins over both.
        **(NCCL_DEFAULTS if shape.gpus else {}),
        **settings.env,
        PET_NNODES: str(shape.nodes),
        PET_NPROC_PER_NODE: str(shape.procs),
        PET_NODE_RANK: specs.macros.replica_id,
        PET_MASTER_PORT: str(settings.rdzv_port),
        PET_RDZV_ID: specs.macros.app_id,
    }
    role = specs.Role(
        name=stage,
        image=settings.image,
        entrypoint="bash",
        args=["-c", prologue(stage, settings), "forgeline-stage", config_text.replace("$", "$$")],
        num_replicas=shape.nodes,
        resource=specs.Resource(cpu=shape.cpu, gpu=shape.gpus, memMB=shape.mem_mb),
        env=env,
        port_map={"rendezvous": settings.rdzv_port},
        max_retries=settings.max_retries,
    )
    if settings.env_secret:
        # Every replica's one container has this role's image; JOIN merges into it by that field
        # (its name differs per replica) and sets envFrom, which torchx leaves empty.
        refs = [{"secretRef": {"name": settings.env_secret}}]
        set_overlay(role, "kubernetes", "V1Pod", {"spec": {JOIN("containers", on="image"): [
            {"image": settings.image, "envFrom": refs}
        ]}})  # fmt: skip
    return specs.AppDef(name=name, roles=[role])
