"""The five kinds (group forgeline.io, version v1alpha1) and their shared status.

Immutability: once created, a job's spec is fixed except `spec.runPolicy` (suspend, deadlines,
TTL, backoffLimit). Changing the model, data, training or resources under a running job would make
its checkpoints and lineage lie about what produced them; create a new job instead. The CRD
enforces this with `self == oldSelf` on each immutable block.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from forgeline.api.evalspec import EvalSpec
from forgeline.api.fields import ApiModel, JobName, Label, Rule, Uri, snake_case
from forgeline.api.gate import Gate
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
IMMUTABLE_BLOCKS = (
    *("model", "tokenizer", "data", "training", "lora", "rlhf", "resources", "storage", "gate"),
    *("models", "rewardModel", "generation", "bestOfN", "baseline"),  # EvalJob
)
# Input roles (status.inputs[].role, the stage config's inputs): an EvalJob's models are
# `models.<name>`, its reward model `judge`; `gate` is the EvalJob a gated stage waits for.
INPUT_ROLE = r"^(model|policy|rewardModel|judge|gate|models\.[a-z]([-a-z0-9]*[a-z0-9])?)$"

CONDITION_TYPES = ("Created", "InputsReady", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
STATES = ("Created", "Waiting", "Running", "Restarting", "Suspended", "Succeeded", "Failed")


class ObjectMeta(ApiModel):
    """The part of metadata forgeline reads; everything else kubectl or the server adds is kept."""

    model_config = ConfigDict(extra="allow")
    name: JobName = Field(description="job name: a DNS label of at most 40 characters (it names pods and a Service)")
    namespace: Label | None = Field(default=None, description="namespace; default: the current one")


_TIME = "RFC 3339 time"


class Condition(ApiModel):
    """metav1.Condition: one aspect of the job's state, with when and why it last changed."""

    type: Literal["Created", "InputsReady", "Running", "Restarting", "Suspended", "Succeeded", "Failed"] = Field(
        description="which aspect: Created, InputsReady, Running, Restarting, Suspended, Succeeded or Failed"
    )
    status: Literal["True", "False", "Unknown"] = Field(description="whether the condition holds: True, False, Unknown")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase cause of the last transition, for programs (e.g. InvalidConfig)",
    )
    message: str = Field(default="", max_length=32768, description="the cause in words, for people; default empty")
    last_transition_time: str = Field(
        max_length=64,
        description=_TIME + " when status last changed",
        json_schema_extra={"format": "date-time"},
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec this condition was computed from"
    )


class ReplicaCounts(ApiModel):
    """Pods of the current attempt by phase."""

    pending: int = Field(default=0, ge=0, description="pods not yet running (scheduling, pulling images)")
    running: int = Field(default=0, ge=0, description="pods running")
    succeeded: int = Field(default=0, ge=0, description="pods that exited 0")
    failed: int = Field(default=0, ge=0, description="pods that failed")


class Progress(ApiModel):
    """The trainer's latest progress report (every training.logInterval steps)."""

    step: int = Field(default=0, ge=0, description="optimizer steps done")
    total: int | None = Field(default=None, ge=0, description="optimizer steps the run will take")
    loss: float | None = Field(default=None, description="mean training loss over the last logInterval steps")
    eval_loss: float | None = Field(
        default=None, description="held-out loss at the last evaluation (before training, every evalInterval, after)"
    )
    tokens_per_second: float | None = Field(
        default=None, ge=0, description="training throughput over the gang (tokens/s)"
    )
    summary: str = Field(default="", max_length=64, description="step/total and percent, e.g. 120/200 (60%)")
    updated: str | None = Field(
        default=None,
        max_length=64,
        description=_TIME + " of the report",
        json_schema_extra={"format": "date-time"},
    )


class InputRecord(ApiModel):
    """Lineage: exactly which artifact (by manifest digest) a stage consumed."""

    role: str = Field(
        max_length=64,
        pattern=INPUT_ROLE,
        description="which input: model, policy, rewardModel; an EvalJob's models.<name> and judge; gate (the "
        "EvalJob a gated stage waited for)",
    )
    kind: Literal["PretrainJob", "RewardModelJob", "RLHFJob", "LoRAJob", "EvalJob"] | None = Field(
        default=None, description="kind of the job that produced it; unset for a URI input"
    )
    name: JobName | None = Field(default=None, description="name of the job that produced it; unset for a URI input")
    uri: Uri = Field(description="artifact location that was read")
    digest: str | None = Field(
        default=None, max_length=128, description="sha256 of the artifact's _MANIFEST.json, as sha256:<hex>"
    )


class Output(ApiModel):
    """The committed artifact."""

    uri: Uri = Field(description="where the artifact was committed")
    digest: str | None = Field(
        default=None, max_length=128, description="sha256 of its _MANIFEST.json, as sha256:<hex>; later jobs pin it"
    )
    metrics: dict[str, float] | None = Field(
        default=None, max_length=32, description="the stage's final metrics (e.g. eval_loss_final)"
    )


class JobStatus(ApiModel):
    """Written by the operator only: state, conditions, attempts, progress, lineage and output."""

    state: Literal["Created", "Waiting", "Running", "Restarting", "Suspended", "Succeeded", "Failed"] | None = Field(
        default=None, description="one-word summary of the conditions"
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="the latest observation of each aspect, one per type",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last acted on"
    )
    attempt: int = Field(default=0, ge=0, description="current attempt (gang) number; 0 before the first")
    restarts: int = Field(default=0, ge=0, description="restarts after retryable failures; at most backoffLimit")
    evictions: int = Field(default=0, ge=0, description="restarts caused by evictions; they use no retry budget")
    replicas: ReplicaCounts | None = Field(default=None, description="pods of the current attempt by phase")
    progress: Progress | None = Field(default=None, description="the trainer's latest progress report")
    inputs: list[InputRecord] = Field(
        default_factory=list, max_length=16, description="the input artifacts this job read, pinned by digest"
    )
    output: Output | None = Field(default=None, description="the committed artifact, once the job succeeded")
    start_time: str | None = Field(
        default=None,
        max_length=64,
        description=_TIME + " the first attempt started",
        json_schema_extra={"format": "date-time"},
    )
    completion_time: str | None = Field(
        default=None,
        max_length=64,
        description=_TIME + " the job succeeded or failed",
        json_schema_extra={"format": "date-time"},
    )


DEFAULT_BATCH = Training.model_fields["batch_size"].default


class _JobSpecBase(ApiModel):
    data: Data = Field(description="the training data; immutable")
    training: Training = Field(
        default_factory=Training, description="optimisation settings; every field has a default; immutable"
    )
    resources: Resources = Field(
        default_factory=Resources, description="the gang and its pods; default one node, one GPU; immutable"
    )
    storage: Storage = Field(
        default_factory=Storage, description="where the output goes; default: the operator's store; immutable"
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="retries, deadlines, TTL, suspend; the only mutable block"
    )
    gate: Gate | None = Field(
        default=None,
        description="start only if an EvalJob's result meets a condition (waits for the EvalJob); default none; "
        "immutable",
    )

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            # Blocks left out have no CRD default ({}): guard with has(); inside one, fields are defaulted.
            cel="!has(self.training) || !has(self.resources) || "
            "!(self.training.precision == 'fp16' && self.resources.gpusPerNode == 0)",
            message="fp16 needs a GPU (gpusPerNode is 0); use precision fp32 or auto on CPU",
            check=lambda m: not (m.training.precision == "fp16" and m.resources.gpus_per_node == 0),
            field="training.precision",
        ),
    )


class PretrainSpec(_JobSpecBase):
    """A causal language model trained on text, from scratch or continued."""

    model: PretrainModel = Field(description="from scratch (config), or continued from a job or a URI; immutable")
    tokenizer: Tokenizer = Field(
        default_factory=Tokenizer, description="default: the input model's, or trained on the data; immutable"
    )

    rules = (
        *_JobSpecBase.rules,
        Rule(
            cel="!has(self.tokenizer) || !has(self.tokenizer.vocabSize) || !has(self.model.config) || "
            "self.tokenizer.vocabSize <= self.model.config.vocabSize",
            message="the tokenizer's vocabSize is larger than the model's (model.config.vocabSize): token ids past "
            "the embedding would fail; make it at most the model's",
            check=lambda m: (
                m.tokenizer.vocab_size is None
                or m.model.config is None
                or m.tokenizer.vocab_size <= m.model.config.vocab_size
            ),
            field="tokenizer.vocabSize",
        ),
    )


class RewardModelSpec(_JobSpecBase):
    """A reward model (a language model with a scalar head) trained on preference pairs."""

    model: ModelInput = Field(description="the language model the reward model starts from; immutable")


class RLHFSpec(_JobSpecBase):
    """A policy improved against a reward model."""

    rlhf: RLHFSettings = Field(description="policy, reward model and algorithm; immutable")

    rules = (
        *_JobSpecBase.rules,
        Rule(
            cel="self.rlhf.algorithm == 'dpo' || "
            f"(has(self.training) ? self.training.batchSize : {DEFAULT_BATCH}) % self.rlhf.generationsPerPrompt == 0",
            message="training.batchSize counts completions per step and must be a multiple of "
            "rlhf.generationsPerPrompt (each prompt's group of completions stays in one batch)",
            check=lambda m: m.rlhf.algorithm == "dpo" or m.training.batch_size % m.rlhf.generations_per_prompt == 0,
            field="rlhf.generationsPerPrompt",
        ),
    )


class LoRASpec(_JobSpecBase):
    """Low-rank adapters fine-tuned on a base model."""

    model: ModelInput = Field(description="the base language model; immutable")
    lora: LoRASettings = Field(default_factory=LoRASettings, description="adapter shape and target layers; immutable")


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
    api_version: Literal["forgeline.io/v1alpha1"] = Field(description="forgeline.io/v1alpha1")
    metadata: ObjectMeta = Field(description="standard object metadata")
    status: JobStatus | None = Field(default=None, description="written by the operator")

    @classmethod
    def input_roles(cls) -> tuple[str, ...]:
        return ("model",)


class PretrainJob(_JobBase):
    """Pretrains a causal language model (Llama-style) from scratch, or continues one; the other kinds build on it."""

    kind_name = "PretrainJob"
    plural = "pretrainjobs"
    short_names = ("ptj",)
    stage = "pretrain"
    kind: Literal["PretrainJob"] = Field(description="PretrainJob")
    spec: PretrainSpec = Field(description="what to train; immutable except runPolicy")
    rules = (_not_self("spec.model", "PretrainJob"),)


class RewardModelJob(_JobBase):
    """Trains a reward model on preference pairs (chosen over rejected), starting from a language model."""

    kind_name = "RewardModelJob"
    plural = "rewardmodeljobs"
    short_names = ("rmj",)
    stage = "reward"
    kind: Literal["RewardModelJob"] = Field(description="RewardModelJob")
    spec: RewardModelSpec = Field(description="what to train; immutable except runPolicy")


class RLHFJob(_JobBase):
    """Improves a policy language model: RLOO or GRPO against a reward model, or DPO on preference pairs."""

    kind_name = "RLHFJob"
    plural = "rlhfjobs"
    short_names = ("rlhfj",)
    stage = "rlhf"
    kind: Literal["RLHFJob"] = Field(description="RLHFJob")
    spec: RLHFSpec = Field(description="what to train; immutable except runPolicy")
    rules = (_not_self("spec.rlhf.policy", "RLHFJob"),)

    @classmethod
    def input_roles(cls) -> tuple[str, ...]:
        return ("policy", "rewardModel")


class LoRAJob(_JobBase):
    """Fine-tunes low-rank adapters on a base language model (supervised, prompt to completion)."""

    kind_name = "LoRAJob"
    plural = "lorajobs"
    short_names = ("loraj",)
    stage = "lora"
    kind: Literal["LoRAJob"] = Field(description="LoRAJob")
    spec: LoRASpec = Field(description="what to train; immutable except runPolicy")
    rules = (_not_self("spec.model", "LoRAJob"),)


class EvalJob(_JobBase):
    """Compares language models on held-out data: loss, reward-model score, win rates, ratings, best-of-N."""

    kind_name = "EvalJob"
    plural = "evaljobs"
    short_names = ("evalj",)
    stage = "eval"
    kind: Literal["EvalJob"] = Field(description="EvalJob")
    spec: EvalSpec = Field(description="what to evaluate; immutable except runPolicy")


Job = PretrainJob | RewardModelJob | RLHFJob | LoRAJob | EvalJob
KINDS: dict[str, type[_JobBase]] = {k.kind_name: k for k in (PretrainJob, RewardModelJob, RLHFJob, LoRAJob, EvalJob)}


def model_sources(job: Job) -> dict[str, ModelInput | PretrainModel | Any]:
    """The job's input model sources by role (model; policy and rewardModel for RLHF; an EvalJob's
    models.<name> and judge)."""
    if isinstance(job, EvalJob):
        sources: dict[str, Any] = {f"models.{m.name}": m for m in job.spec.models}
        if job.spec.reward_model is not None:
            sources["judge"] = job.spec.reward_model
        return sources
    if isinstance(job, RLHFJob):
        sources = {"policy": job.spec.rlhf.policy, "rewardModel": job.spec.rlhf.reward_model}
        return {role: source for role, source in sources.items() if source is not None}  # dpo: no rewardModel
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
    "EvalJob",
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
