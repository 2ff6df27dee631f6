"""The four kinds (group forgeline.io, version v1alpha1) and their shared status.

Immutability: once created, a job's spec is fixed except `spec.runPolicy` (suspend, deadlines,
TTL, backoffLimit). Changing the model, data, training or resources under a running job would make
its checkpoints and lineage lie about what produced them; create a new job instead. The CRD
enforces this with `self == oldSelf` on each immutable block.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from forgeline.api.fields import ApiModel, JobName, Label, Rule, Uri, snake_case
from forgeline.api.spec import (
    Data,
    LoRASettings,
    ModelInput,
    PretrainModel,
    Resources,
    RLHFSettings,
    RunPolicy,
    Storage,
    Tokenizer,
    Training,
)

GROUP = "forgeline.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
IMMUTABLE_BLOCKS = ("model", "tokenizer", "data", "training", "lora", "rlhf", "resources", "storage")

CONDITION_TYPES = ("Created", "InputsReady", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
STATES = ("Created", "Waiting", "Running", "Restarting", "Suspended", "Succeeded", "Failed")


class ObjectMeta(ApiModel):
    """The part of metadata forgeline reads; everything else kubectl or the server adds is kept."""

    model_config = ConfigDict(extra="allow")
    name: JobName
    namespace: Label | None = None


class Condition(ApiModel):
    """metav1.Condition."""

    type: Literal["Created", "InputsReady", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    last_transition_time: str = Field(max_length=64, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(default=None, ge=0)


class ReplicaCounts(ApiModel):
    pending: int = Field(default=0, ge=0)
    running: int = Field(default=0, ge=0)
    succeeded: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)


class Progress(ApiModel):
    step: int = Field(default=0, ge=0)
    total: int | None = Field(default=None, ge=0)
    loss: float | None = None
    tokens_per_second: float | None = Field(default=None, ge=0)
    summary: str = Field(default="", max_length=64, description="e.g. 120/200 (60%)")
    updated: str | None = Field(default=None, max_length=64, json_schema_extra={"format": "date-time"})


class InputRecord(ApiModel):
    """Lineage: exactly which artifact (by manifest digest) a stage consumed."""

    role: Literal["model", "policy", "rewardModel"]
    kind: Literal["PretrainJob", "RewardModelJob", "RLHFJob", "LoRAJob"] | None = None
    name: JobName | None = None
    uri: Uri
    digest: str | None = Field(default=None, max_length=128)


class Output(ApiModel):
    uri: Uri
    digest: str | None = Field(default=None, max_length=128)
    metrics: dict[str, float] | None = Field(default=None, max_length=32)


class JobStatus(ApiModel):
    state: Literal["Created", "Waiting", "Running", "Restarting", "Suspended", "Succeeded", "Failed"] | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(default=None, ge=0)
    attempt: int = Field(default=0, ge=0)
    restarts: int = Field(default=0, ge=0)
    evictions: int = Field(default=0, ge=0, description="restarts caused by evictions; they use no retry budget")
    replicas: ReplicaCounts | None = None
    progress: Progress | None = None
    inputs: list[InputRecord] = Field(default_factory=list, max_length=8)
    output: Output | None = None
    start_time: str | None = Field(default=None, max_length=64, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(default=None, max_length=64, json_schema_extra={"format": "date-time"})


class _JobSpecBase(ApiModel):
    data: Data
    training: Training = Field(default_factory=Training)
    resources: Resources = Field(default_factory=Resources)
    storage: Storage = Field(default_factory=Storage)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)


class PretrainSpec(_JobSpecBase):
    model: PretrainModel
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)


class RewardModelSpec(_JobSpecBase):
    model: ModelInput


class RLHFSpec(_JobSpecBase):
    rlhf: RLHFSettings


class LoRASpec(_JobSpecBase):
    model: ModelInput
    lora: LoRASettings = Field(default_factory=LoRASettings)


def _not_self(path: str, kind: str) -> Rule:
    """A job cannot consume its own output (`path` is the camelCase path of a model source)."""
    attrs = [snake_case(p) for p in path.split(".")]

    def check(job: Any) -> bool:
        source = job
        for a in attrs:
            source = getattr(source, a)
        ref = source.from_job
        return ref is None or not (ref.kind == kind and ref.name == job.metadata.name)

    return Rule(
        cel=f"!has(self.{path}.fromJob) || !(self.{path}.fromJob.kind == '{kind}' && "
        f"self.{path}.fromJob.name == self.metadata.name)",
        message=f"{path}.fromJob names this job itself; a job cannot consume its own output",
        check=check,
    )


class _JobBase(ApiModel):
    """A job object as it appears in a manifest."""

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    stage: ClassVar[str]
    api_version: Literal["forgeline.io/v1alpha1"]
    metadata: ObjectMeta
    status: JobStatus | None = None

    @classmethod
    def input_roles(cls) -> tuple[str, ...]:
        return ("model",)


class PretrainJob(_JobBase):
    kind_name = "PretrainJob"
    plural = "pretrainjobs"
    short_names = ("ptj",)
    stage = "pretrain"
    kind: Literal["PretrainJob"]
    spec: PretrainSpec
    rules = (_not_self("spec.model", "PretrainJob"),)


class RewardModelJob(_JobBase):
    kind_name = "RewardModelJob"
    plural = "rewardmodeljobs"
    short_names = ("rmj",)
    stage = "reward"
    kind: Literal["RewardModelJob"]
    spec: RewardModelSpec


class RLHFJob(_JobBase):
    kind_name = "RLHFJob"
    plural = "rlhfjobs"
    short_names = ("rlhfj",)
    stage = "rlhf"
    kind: Literal["RLHFJob"]
    spec: RLHFSpec
    rules = (_not_self("spec.rlhf.policy", "RLHFJob"),)

    @classmethod
    def input_roles(cls) -> tuple[str, ...]:
        return ("policy", "rewardModel")


class LoRAJob(_JobBase):
    kind_name = "LoRAJob"
    plural = "lorajobs"
    short_names = ("loraj",)
    stage = "lora"
    kind: Literal["LoRAJob"]
    spec: LoRASpec
    rules = (_not_self("spec.model", "LoRAJob"),)


Job = PretrainJob | RewardModelJob | RLHFJob | LoRAJob
KINDS: dict[str, type[_JobBase]] = {k.kind_name: k for k in (PretrainJob, RewardModelJob, RLHFJob, LoRAJob)}


def model_sources(job: Job) -> dict[str, ModelInput | PretrainModel | Any]:
    """The job's input model sources by role (model; or policy and rewardModel for RLHF)."""
    if isinstance(job, RLHFJob):
        return {"policy": job.spec.rlhf.policy, "rewardModel": job.spec.rlhf.reward_model}
    return {"model": job.spec.model}


__all__ = [
    "API_VERSION",
    "CONDITION_TYPES",
    "GROUP",
    "IMMUTABLE_BLOCKS",
    "KINDS",
    "STATES",
    "VERSION",
    "Condition",
    "InputRecord",
    "Job",
    "JobStatus",
    "LoRAJob",
    "ObjectMeta",
    "Output",
    "PretrainJob",
    "Progress",
    "RLHFJob",
    "ReplicaCounts",
    "RewardModelJob",
]
