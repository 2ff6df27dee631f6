"""The stage config: its schema (the one declaration both sides share) and how a job builds it.

A job (API model) plus its resolved inputs -> the stage config the training side reads. Pure and
shared: the operator puts the result in a ConfigMap, the local runner (and the torchx components)
in a file. The training side (forgeline.jobs.contract) parses it strictly and checks it before
paying for torch; tests/unit/test_contract_parity.py drives every boundary value the API accepts
through both, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from forgeline.api.kinds import Job, LoRAJob, PretrainJob, RLHFJob

CONTRACT_VERSION = 1

Stage = Literal["pretrain", "reward", "rlhf", "lora"]
SyntheticKind = Literal["corpus", "preferences", "prompts", "sft"]


@dataclass(frozen=True)
class RunRef:
    namespace: str = "default"
    name: str = "run"
    kind: str = ""
    attempt: int = 1


@dataclass(frozen=True)
class ArtifactRef:
    uri: str
    digest: str | None = None


@dataclass(frozen=True)
class StorageConfig:
    endpoint: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    family: Literal["llama"] = "llama"
    layers: int = 2
    hidden_size: int = 64
    heads: int = 4
    kv_heads: int | None = None
    intermediate_size: int | None = None
    vocab_size: int = 512
    context_length: int = 64


@dataclass(frozen=True)
class TokenizerConfig:
    uri: str | None = None
    vocab_size: int = 512


@dataclass(frozen=True)
class SyntheticData:
    kind: SyntheticKind
    examples: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    uri: str | None = None
    format: Literal["jsonl", "txt", "parquet"] = "jsonl"
    text_field: str = "text"
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    completion_field: str = "completion"
    synthetic: SyntheticData | None = None
    eval_fraction: float = 0.1


@dataclass(frozen=True)
class TrainingConfig:
    max_steps: int | None = 200
    epochs: float | None = None
    batch_size: int = 16
    learning_rate: float = 3e-3
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    checkpoint_interval: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    log_interval: int = 10
    strategy: Literal["ddp", "fsdp"] = "ddp"
    gradient_accumulation: int = 1
    warmup_steps: int = 0


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    merge: bool = True


@dataclass(frozen=True)
class RlhfSettings:
    reward_model: ArtifactRef
    algorithm: Literal["rloo", "grpo"] = "rloo"
    generations_per_prompt: int = 4
    max_completion_length: int = 16
    kl_beta: float = 0.05


@dataclass(frozen=True)
class ObservabilityConfig:
    metrics_port: int = 0
    termination_message_path: str | None = None


@dataclass(frozen=True)
class StageConfig:
    stage: Stage
    output_uri: str
    version: int = CONTRACT_VERSION
    run: RunRef = field(default_factory=RunRef)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ArtifactRef | None = None
    model_config: ModelConfig | None = None
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraSettings | None = None
    rlhf: RlhfSettings | None = None
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- building

SYNTHETIC_KIND: dict[str, SyntheticKind] = {"pretrain": "corpus", "reward": "preferences", "rlhf": "prompts", "lora": "sft"}
# Learning rates that suit each stage when the spec leaves it out; RL needs a far smaller step.
DEFAULT_LEARNING_RATE = {"pretrain": 3e-3, "reward": 1e-3, "rlhf": 2e-4, "lora": 3e-3}


@dataclass(frozen=True)
class ResolvedInput:
    """An input model as the stage will read it: a URI and, when known, its manifest digest."""

    uri: str
    digest: str | None = None


def default_output_uri(store: str, job: Job) -> str:
    namespace = job.metadata.namespace or "default"
    return f"{store.rstrip('/')}/{namespace}/{job.kind.lower()}/{job.metadata.name}"


def output_uri(store: str, job: Job) -> str:
    return job.spec.storage.output_uri or default_output_uri(store, job)


def default_world_size(job: Job) -> int:
    return job.spec.resources.nodes * job.spec.resources.procs


def build_stage_config(
    job: Job,
    *,
    attempt: int,
    output: str,
    inputs: dict[str, ResolvedInput],
    metrics_port: int = 0,
    termination_message_path: str | None = None,
    endpoint: str | None = None,
    world_size: int | None = None,
) -> StageConfig:
    """`inputs` maps a role (model, or policy and rewardModel) to its resolved artifact.

    `world_size` is the number of processes that will really run (the local runner may run fewer
    than the spec asks for); the contract's batch size is global, the spec's is per process.
    """
    spec = job.spec
    stage = job.stage
    model_config = None
    tokenizer = TokenizerConfig()
    if isinstance(job, PretrainJob):
        if spec.model.config is not None:
            arch = spec.model.config
            model_config = ModelConfig(**arch.model_dump(exclude_none=False))
        vocab = spec.tokenizer.vocab_size or (model_config.vocab_size if model_config else TokenizerConfig.vocab_size)
        tokenizer = TokenizerConfig(uri=spec.tokenizer.uri, vocab_size=vocab)
    model_role = "policy" if isinstance(job, RLHFJob) else "model"
    model = inputs.get(model_role)
    data = spec.data
    synthetic = None
    if data.synthetic is not None:
        synthetic = SyntheticData(
            kind=data.synthetic.kind or SYNTHETIC_KIND[stage],
            examples=data.synthetic.examples,
            seed=data.synthetic.seed,
        )
    training = spec.training
    rlhf = None
    if isinstance(job, RLHFJob):
        settings = spec.rlhf
        reward = inputs["rewardModel"]
        rlhf = RlhfSettings(
            reward_model=ArtifactRef(reward.uri, reward.digest),
            **settings.model_dump(exclude={"policy", "reward_model"}),
        )
    lora = None
    if isinstance(job, LoRAJob):
        lora = LoraSettings(**spec.lora.model_dump())
    return StageConfig(
        stage=stage,
        output_uri=output,
        run=RunRef(
            namespace=job.metadata.namespace or "default", name=job.metadata.name, kind=job.kind, attempt=attempt
        ),
        storage=StorageConfig(endpoint=endpoint or spec.storage.endpoint),
        model=ArtifactRef(model.uri, model.digest) if model else None,
        model_config=model_config,
        tokenizer=tokenizer,
        # The API blocks and the contract's dataclasses share field names; only these differ.
        data=DataConfig(**{**data.model_dump(exclude={"synthetic"}), "synthetic": synthetic}),
        training=TrainingConfig(
            **{
                **training.model_dump(),
                # Neither set: one pass over the data, which is what a user who said nothing expects.
                "epochs": (training.epochs or 1) if training.max_steps is None else None,
                "batch_size": training.batch_size
                * training.gradient_accumulation
                * (world_size or default_world_size(job)),
                "learning_rate": training.learning_rate or DEFAULT_LEARNING_RATE[stage],
            }
        ),
        lora=lora,
        rlhf=rlhf,
        observability=ObservabilityConfig(metrics_port=metrics_port, termination_message_path=termination_message_path),
    )


def stage_config_dict(job: Job, **kwargs: Any) -> dict[str, Any]:
    return build_stage_config(job, **kwargs).to_dict()
