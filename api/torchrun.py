"""The torchrun contract: the environment every node of a gang gets, whichever backend runs it.

The operator puts these on each pod (operator/render.py) and the laptop runner on each agent
(local/gang.py), so a stage cannot tell a cluster from a laptop. torchrun reads the PET_* names as
its own flags; the stage reads FORGELINE_TERMINATION_MESSAGE_PATH to know where rank 0 leaves its
result. Each name is declared once, here; the API (spec.py) rejects user variables of these names,
because a user value would break rendezvous rather than override it.
"""

from __future__ import annotations

# What the backend sets on every node (torchrun's flags as PET_* variables).
PET_NNODES = "PET_NNODES"
PET_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
PET_NODE_RANK = "PET_NODE_RANK"
PET_MASTER_ADDR = "PET_MASTER_ADDR"
PET_MASTER_PORT = "PET_MASTER_PORT"
PET_RDZV_ID = "PET_RDZV_ID"
# torchrun flags we never set (a static rendezvous on rank 0 needs no endpoint or backend), but a
# user value would switch torchrun to another rendezvous.
PET_RDZV_ENDPOINT = "PET_RDZV_ENDPOINT"
PET_RDZV_BACKEND = "PET_RDZV_BACKEND"
# Where rank 0 writes its result (the container's terminationMessagePath on a cluster).
FORGELINE_TERMINATION_MESSAGE_PATH = "FORGELINE_TERMINATION_MESSAGE_PATH"

# torch.distributed's per-process names: torchrun sets them inside the gang; node-level values
# from outside confuse torch (kubeflow/trainer#1790).
TORCH_PROCESS_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
)

RESERVED_ENV = (
    PET_NNODES,
    PET_NPROC_PER_NODE,
    PET_NODE_RANK,
    PET_MASTER_ADDR,
    PET_MASTER_PORT,
    PET_RDZV_ID,
    PET_RDZV_ENDPOINT,
    PET_RDZV_BACKEND,
    *TORCH_PROCESS_ENV,
)
RESERVED_ENV_PREFIXES = ("PET_", "FORGELINE_")

# The rendezvous port on node 0 when nothing else chooses one (torchrun's own default).
MASTER_PORT = 29500
# The object-store credentials a stage reads (botocore's names); they reach a node only by
# reference (a secretKeyRef, a Kubernetes secret, the submitting environment), never as a value.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The trainer image a backend uses when neither the job nor its operator names one.
DEFAULT_TRAINER_IMAGE = "ghcr.io/forgeline/trainer:0.1.0"
# Sensible for multi-node NCCL whichever backend launches the gang; a user env var of the same name wins.
NCCL_DEFAULTS: dict[str, str] = {
    "NCCL_DEBUG": "WARN",
    "NCCL_IB_TIMEOUT": "22",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a dead peer raises instead of hanging the gang
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "0",
}
