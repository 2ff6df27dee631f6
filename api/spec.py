"""The blocks the four kinds share: model sources, data, training, resources, storage, run policy.

Defaults are chosen so a minimal manifest is short (one node, one GPU, three retries); the
generated CRD carries them, so `kubectl get -o yaml` shows the effective spec.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from forgeline.api.fields import (
    ApiModel,
    Endpoint,
    EnvName,
    JobName,
    Label,
    NonNegativeQuantity,
    Rule,
    ShortText,
    Uri,
    exactly_one,
)
from forgeline.api.podspec import Affinity, EnvVarSource, LabelKey, LabelValue, ObjectName, qualified_keys
from forgeline.api.torchrun import RESERVED_ENV, RESERVED_ENV_PREFIXES

LANGUAGE_MODEL_KINDS = ("PretrainJob", "LoRAJob", "RLHFJob")
# Training processes per pod on CPU (gpusPerNode 0): more than the cores of any node only thrash.
MAX_CPU_PROCS = 64
DEFAULT_STARTUP_DEADLINE = 900  # seconds


class LanguageModelJobRef(ApiModel):
    """A job whose output is a causal language model."""

    kind: Literal["PretrainJob", "LoRAJob", "RLHFJob"] = Field(
        description="kind of the job whose committed output is used: PretrainJob, LoRAJob or RLHFJob"
    )
    name: JobName = Field(description="name of that job, in this job's namespace; this job waits until it succeeds")


class RewardModelJobRef(ApiModel):
    """A RewardModelJob whose output scores completions."""

    kind: Literal["RewardModelJob"] = Field(default="RewardModelJob", description="always RewardModelJob (the default)")
    name: JobName = Field(description="name of the RewardModelJob, in this job's namespace; this job waits for it")


class ModelArchitecture(ApiModel):
    """A from-scratch architecture (Llama-style decoder)."""

    family: Literal["llama"] = Field(default="llama", description="architecture family; default llama (the only one)")
    layers: int = Field(ge=1, le=256, description="decoder layers (count); required")
    hidden_size: int = Field(ge=8, le=65536, description="width of the residual stream; required; a multiple of heads")
    heads: int = Field(ge=1, le=512, description="attention heads (count); required; divides hiddenSize")
    kv_heads: int | None = Field(
        default=None, ge=1, le=512, description="key/value heads for grouped-query attention; default: heads (no GQA)"
    )
    intermediate_size: int | None = Field(
        default=None, ge=8, le=262144, description="MLP width; default 3 x hiddenSize"
    )
    vocab_size: int = Field(
        ge=32, le=1048576, description="embedding rows (tokens); required; also the trained tokenizer's size by default"
    )
    context_length: int = Field(
        ge=8, le=1048576, description="tokens per training sequence and position limit; required"
    )

    rules = (
        Rule(
            cel="self.hiddenSize % self.heads == 0",
            message="hiddenSize must be a multiple of heads",
            check=lambda m: m.hidden_size % m.heads == 0,
            field="hiddenSize",
        ),
        Rule(
            cel="!has(self.kvHeads) || self.heads % self.kvHeads == 0",
            message="heads must be a multiple of kvHeads",
            check=lambda m: m.kv_heads is None or m.heads % m.kv_heads == 0,
            field="kvHeads",
        ),
        Rule(
            cel="self.hiddenSize % self.heads != 0 || (self.hiddenSize / self.heads) % 2 == 0",
            message="the head dimension (hiddenSize / heads) must be even: rotary position embeddings rotate pairs "
            "of dimensions",
            check=lambda m: m.hidden_size % m.heads != 0 or (m.hidden_size // m.heads) % 2 == 0,
            field="hiddenSize",
        ),
    )


_FROM_JOB = "the output of another job in this namespace (waits for it to succeed); set exactly one source"
_MODEL_URI = "a committed artifact (s3:// or file://, with a _MANIFEST.json); set exactly one source"


class ModelInput(ApiModel):
    """An input model: the output of another job in this namespace, or an artifact URI."""

    from_job: LanguageModelJobRef | None = Field(default=None, description=_FROM_JOB)
    uri: Uri | None = Field(default=None, description=_MODEL_URI)

    rules = (exactly_one("fromJob", "uri"),)


class PretrainModel(ApiModel):
    """A PretrainJob's model: from scratch (`config`), or continued from a job or a URI."""

    from_job: LanguageModelJobRef | None = Field(default=None, description="continue training " + _FROM_JOB)
    uri: Uri | None = Field(default=None, description="continue training " + _MODEL_URI)
    config: ModelArchitecture | None = Field(
        default=None, description="train from scratch with this architecture; set exactly one source"
    )

    rules = (exactly_one("fromJob", "uri", "config"),)


class RewardModelInput(ApiModel):
    """The reward model: the output of a RewardModelJob in this namespace, or an artifact URI."""

    from_job: RewardModelJobRef | None = Field(default=None, description=_FROM_JOB)
    uri: Uri | None = Field(default=None, description=_MODEL_URI)

    rules = (exactly_one("fromJob", "uri"),)


class Tokenizer(ApiModel):
    """By default the tokenizer travels with the model; a from-scratch model trains one on its data."""

    uri: Uri | None = Field(
        default=None,
        description="tokenizer artifact (s3:// or file://); default: the input model's, or one trained on the data",
    )
    vocab_size: int | None = Field(
        default=None,
        ge=32,
        le=1048576,
        description="size of a tokenizer trained from scratch (tokens); default: model.config.vocabSize",
    )


class SyntheticData(ApiModel):
    """Data generated by the stage itself (forgeline.jobs.data); the kind defaults to the stage's."""

    kind: Literal["corpus", "preferences", "prompts", "sft"] | None = Field(
        default=None,
        description="what to generate; default: the stage's own (pretrain corpus, reward preferences, "
        "RLHF prompts, DPO preferences, LoRA sft)",
    )
    examples: int = Field(default=2000, ge=10, le=10_000_000, description="records generated (count); default 2000")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="generator seed; same seed, same records; default 0")


class Data(ApiModel):
    """The training data: records at a URI, or generated (synthetic); a held-out share is evaluated."""

    uri: Uri | None = Field(
        default=None,
        description="a file, or a prefix of *.<format> shards (s3:// or file://); set exactly one of uri, synthetic",
    )
    synthetic: SyntheticData | None = Field(
        default=None, description="generate the data in the stage instead; set exactly one of uri, synthetic"
    )
    format: Literal["jsonl", "txt", "parquet", "datasets", "auto"] = Field(
        default="jsonl",
        description="record format at uri: jsonl, txt (one text per line), parquet, datasets (a Hugging Face "
        "datasets directory written by save_to_disk), or auto (from the file suffix, or datasets for a directory "
        "with dataset_info.json or state.json); default jsonl",
    )
    text_field: Label = Field(default="text", description="record field holding plain text (pretrain); default text")
    prompt_field: Label = Field(
        default="prompt", description="record field holding the prompt (reward, RLHF, LoRA); default prompt"
    )
    chosen_field: Label = Field(
        default="chosen", description="record field holding the preferred answer (reward); default chosen"
    )
    rejected_field: Label = Field(
        default="rejected", description="record field holding the rejected answer (reward); default rejected"
    )
    completion_field: Label = Field(
        default="completion", description="record field holding the target answer (LoRA); default completion"
    )
    messages_field: Label = Field(
        default="messages",
        description="record field holding a chat, a list of {role, content} messages (LoRA: loss on the assistant "
        "turns only; RLHF: the turns before the last assistant turn are the prompt); rendered with the model's chat "
        "template; used when a record has it; default messages",
    )
    eval_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="share of records held out for evaluation (by prompt hash, never trained on); default 0.1",
    )

    rules = (exactly_one("uri", "synthetic"),)


class Training(ApiModel):
    """The optimisation: how long, how big a batch, precision, parallelism, checkpoints."""

    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="optimizer steps to run; default: one epoch when epochs is unset too; not both",
    )
    epochs: int | None = Field(
        default=None, ge=1, le=100_000, description="passes over the training data; default 1 when maxSteps is unset"
    )
    batch_size: int = Field(
        default=8,
        ge=1,
        le=65536,
        description="sequences per process per micro-step; default 8; one optimizer step sees batchSize x "
        "processes x gradientAccumulation sequences",
    )
    gradient_accumulation: int = Field(
        default=1, ge=1, le=4096, description="micro-steps summed into one optimizer step; default 1"
    )
    learning_rate: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="peak AdamW learning rate, reached after warmupSteps, then the lrScheduler's decay; default per "
        "stage: pretrain 3e-3, reward 1e-3, RLHF 2e-4, LoRA 3e-3",
    )
    warmup_steps: int = Field(
        default=0, ge=0, le=1_000_000, description="steps of linear learning-rate warm-up; default 0 (none)"
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        default="cosine",
        description="learning-rate schedule after warmupSteps: cosine (decays to 10 % of the peak at the last "
        "step), linear (decays to 0 at the last step) or constant (the peak throughout); default cosine",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="recompute activations in the backward pass instead of keeping them: less memory, about a "
        "third more compute per step; default false",
    )
    eval_interval: int = Field(
        default=0,
        ge=0,
        le=1_000_000_000,
        description="optimizer steps between held-out evaluations during training (eval loss in status.progress, "
        "the metrics and the report); default 0: evaluate only before and after training",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="numeric precision; default auto: bf16 on a GPU that supports it, else fp32"
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp", description="data parallelism: ddp replicates the model, fsdp shards it; default ddp"
    )
    checkpoint_interval: int = Field(
        default=100,
        ge=0,
        le=1_000_000_000,
        description="optimizer steps between checkpoints a restart resumes from; default 100; 0: no periodic "
        "checkpoints (the final output is still committed)",
    )
    keep_checkpoints: int = Field(
        default=2, ge=1, le=100, description="newest checkpoints kept; older ones are deleted; default 2"
    )
    log_interval: int = Field(
        default=10,
        ge=1,
        le=1_000_000,
        description="optimizer steps between progress reports (status.progress); default 10",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="seed of initialisation and data order; a resume replays it; default 0",
    )

    rules = (
        Rule(
            cel="!(has(self.maxSteps) && has(self.epochs))",
            message="set maxSteps or epochs, not both",
            check=lambda m: m.max_steps is None or m.epochs is None,
        ),
        Rule(
            cel="!has(self.maxSteps) || self.warmupSteps < self.maxSteps",
            message="warmupSteps must be less than maxSteps: the run would end before the learning rate reached "
            "its peak",
            check=lambda m: m.max_steps is None or m.warmup_steps < m.max_steps,
            field="warmupSteps",
        ),
    )


class LoRASettings(ApiModel):
    """Low-rank adapters trained on a frozen base model."""

    r: int = Field(default=8, ge=1, le=1024, description="adapter rank; default 8")
    alpha: int = Field(default=16, ge=1, le=4096, description="adapter scaling numerator (scale alpha / r); default 16")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="dropout on the adapter input; default 0.05")
    target_modules: list[Label] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        max_length=32,
        description="names of the linear layers that get adapters; default [q_proj, v_proj]",
    )
    merge: bool = Field(
        default=True, description="merge the adapters into the base weights in the output; default true"
    )


class RLHFSettings(ApiModel):
    """Policy optimisation against a reward model (trl RLOO or GRPO), or on preference pairs (trl DPO)."""

    policy: ModelInput = Field(description="the language model to improve (and DPO's reference); required")
    reward_model: RewardModelInput | None = Field(
        default=None,
        description="the reward model that scores its completions; required for rloo and grpo, absent for dpo",
    )
    algorithm: Literal["rloo", "grpo", "dpo"] = Field(
        default="rloo",
        description="rloo (leave-one-out baseline), grpo (group-relative), or dpo (direct preference optimisation "
        "on the data's chosen/rejected pairs, no reward model, the policy's start as the reference); default rloo",
    )
    generations_per_prompt: int = Field(
        default=4, ge=2, le=64, description="completions sampled per prompt (the group a baseline uses); default 4"
    )
    max_completion_length: int = Field(
        default=16, ge=1, le=8192, description="tokens generated per completion at most; default 16"
    )
    kl_beta: float = Field(
        default=0.05,
        ge=0.0,
        le=10.0,
        description="weight of the KL penalty against the starting policy (dpo: its beta); default 0.05; grpo and "
        "dpo need it above 0",
    )

    rules = (
        Rule(
            cel="!(self.algorithm in ['grpo', 'dpo']) || self.klBeta > 0.0",
            message="algorithms grpo and dpo need klBeta above 0 (the KL penalty against the reference policy)",
            check=lambda m: m.algorithm not in ("grpo", "dpo") or m.kl_beta > 0,
            field="klBeta",
        ),
        Rule(
            cel="self.algorithm == 'dpo' ? !has(self.rewardModel) : has(self.rewardModel)",
            message="set rewardModel for rloo and grpo (it scores the completions); leave it out for dpo (which "
            "learns from the data's chosen/rejected pairs)",
            check=lambda m: (m.reward_model is None) == (m.algorithm == "dpo"),
            field="rewardModel",
        ),
    )


def env_is_reserved(name: str) -> bool:
    return name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES)


class EnvVar(ApiModel):
    """An environment variable for the training container (core/v1 EnvVar)."""

    name: EnvName = Field(description="variable name; PET_*, FORGELINE_* and the torchrun variables are reserved")
    value: str | None = Field(default=None, max_length=32768, description="literal value; set value or valueFrom")
    value_from: EnvVarSource | None = Field(
        default=None,
        description="a core/v1 EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef), in this "
        "job's namespace; set value or valueFrom",
    )

    rules = (
        Rule(
            cel="!(self.name in ["
            + ", ".join(f"'{n}'" for n in RESERVED_ENV)
            + "]) && "
            + " && ".join(f"!self.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES),
            message="is set by forgeline (the torchrun contract: PET_*, FORGELINE_*, RANK, WORLD_SIZE, "
            "MASTER_ADDR, MASTER_PORT, ...); remove this variable",
            check=lambda m: not env_is_reserved(m.name),
            field="name",
        ),
        Rule(
            cel="!(has(self.value) && has(self.valueFrom))",
            message="set value or valueFrom, not both",
            check=lambda m: m.value is None or m.value_from is None,
        ),
    )


class Toleration(ApiModel):
    """A core/v1 Toleration for the training pods."""

    key: LabelKey | None = Field(
        default=None, description="taint key to tolerate (a qualified name); default: any key (with Exists)"
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists (any value) or Equal (value must match); default Equal"
    )
    value: LabelValue | None = Field(
        default=None, description="taint value to match with operator Equal; must be empty with Exists"
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="taint effect to tolerate; default: every effect"
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="seconds a NoExecute taint is tolerated before eviction (effect NoExecute only); default: forever",
    )

    # As the API server validates tolerations on a Pod: otherwise the job is stored but its pods never are.
    rules = (
        Rule(
            cel="has(self.key) || (has(self.operator) && self.operator == 'Exists')",
            message="a toleration without a key must use operator Exists (it tolerates every taint)",
            check=lambda m: m.key is not None or m.operator == "Exists",
            field="operator",
        ),
        Rule(
            cel="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="operator Exists matches any value; leave value out (or use operator Equal)",
            check=lambda m: m.operator != "Exists" or not m.value,
            field="value",
        ),
        Rule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds applies to effect NoExecute only; set effect: NoExecute or remove it",
            check=lambda m: m.toleration_seconds is None or m.effect == "NoExecute",
            field="tolerationSeconds",
        ),
    )


class Resources(ApiModel):
    """The gang: nodes x processes, what each pod asks for, and where it may run."""

    nodes: int = Field(
        default=1, ge=1, le=1024, description="pods in the gang, one per node (torchrun nnodes); default 1"
    )
    gpus_per_node: int = Field(
        default=1, ge=0, le=16, description="nvidia.com/gpu requested per pod; default 1; 0: train on CPU"
    )
    procs_per_node: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CPU_PROCS,  # the most any pod can run: gpusPerNode (at most 16), or this on CPU
        description="training processes per pod (torchrun nproc-per-node); default: gpusPerNode, or 1 on CPU",
    )
    cpu: NonNegativeQuantity | None = Field(
        default=None, description="CPU request and limit per pod (e.g. 8, 500m; not negative); default none"
    )
    memory: NonNegativeQuantity | None = Field(
        default=None, description="memory request and limit per pod (e.g. 64Gi; not negative); default none"
    )
    shm_size: NonNegativeQuantity = Field(
        default="1Gi", description="size of the in-memory /dev/shm (data loaders, NCCL); default 1Gi"
    )
    image: ShortText | None = Field(
        default=None,
        pattern=r"^\S+$",
        description="trainer container image (no whitespace); default: the operator's configured trainer image",
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="extra environment variables for the trainer; default none"
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=32,
        description="node labels the pods require (pod nodeSelector; keys are qualified names, values label "
        "values); default none",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="taints the pods tolerate; default none"
    )
    affinity: Affinity | None = Field(
        default=None, description="a core/v1 Affinity for the pods (node affinity, pod (anti-)affinity); default none"
    )
    priority_class_name: ObjectName | None = Field(
        default=None,
        description="PriorityClass of the pods (preemption order; a DNS subdomain); default: the cluster's",
    )
    scheduler_name: ObjectName | None = Field(
        default=None,
        description="scheduler for the pods (e.g. a gang scheduler; a DNS subdomain); default: default-scheduler",
    )

    rules = (
        Rule(
            cel="self.gpusPerNode == 0 || !has(self.procsPerNode) || self.procsPerNode <= self.gpusPerNode",
            message="procsPerNode cannot exceed gpusPerNode (one process per GPU)",
            check=lambda m: m.gpus_per_node == 0 or m.procs_per_node is None or m.procs_per_node <= m.gpus_per_node,
            field="procsPerNode",
        ),
        qualified_keys("nodeSelector"),
        *(
            Rule(
                cel=f"!has(self.{name}) || type(self.{name}) == string || int(self.{name}) >= 0",
                message=f"{name} must not be negative",
                check=lambda m: True,  # offline, the quantity pattern refuses a negative number already
                field=name,
            )
            for name in ("cpu", "memory", "shmSize")
        ),
    )

    @property
    def procs(self) -> int:
        return self.procs_per_node or max(self.gpus_per_node, 1)


class Storage(ApiModel):
    """Where the output goes and how to reach the object store."""

    output_uri: Uri | None = Field(
        default=None,
        description="where the artifact is committed (s3:// or file://); default: "
        "<operator store>/<namespace>/<kind>/<name>",
    )
    credentials_secret: ObjectName | None = Field(
        default=None,
        description="name of a Secret in this job's namespace (a plain name, no namespace) with AWS_ACCESS_KEY_ID "
        "and AWS_SECRET_ACCESS_KEY for s3://; default: the operator's",
    )
    endpoint: Endpoint | None = Field(
        default=None, description="S3-compatible endpoint URL (http:// or https://); default: the operator's, or AWS"
    )


class RunPolicy(ApiModel):
    """How the run is retried and bounded in time; the only block that may change after creation."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="restarts of the whole gang after retryable failures; default 3; evictions do not count",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=31_536_000, description="seconds from start before the job fails; default: no limit"
    )
    startup_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=31_536_000,
        description=f"seconds an attempt's pods may take to all run (scheduling, image pull); default "
        f"{DEFAULT_STARTUP_DEADLINE}, or activeDeadlineSeconds when that is shorter; at most activeDeadlineSeconds",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="seconds after finishing before the job is deleted; default: kept",
    )
    suspend: bool = Field(
        default=False, description="true: delete the pods and hold; false again resumes; default false"
    )

    rules = (
        Rule(
            cel="!has(self.startupDeadlineSeconds) || !has(self.activeDeadlineSeconds) || "
            "self.startupDeadlineSeconds <= self.activeDeadlineSeconds",
            message="startupDeadlineSeconds is longer than activeDeadlineSeconds, so it could never fire; "
            "lower it (or raise activeDeadlineSeconds)",
            check=lambda m: (
                m.startup_deadline_seconds is None
                or m.active_deadline_seconds is None
                or m.startup_deadline_seconds <= m.active_deadline_seconds
            ),
            field="startupDeadlineSeconds",
        ),
    )

    @property
    def startup_deadline(self) -> int:
        """The effective startupDeadlineSeconds."""
        if self.startup_deadline_seconds is not None:
            return self.startup_deadline_seconds
        return min(DEFAULT_STARTUP_DEADLINE, self.active_deadline_seconds or DEFAULT_STARTUP_DEADLINE)
