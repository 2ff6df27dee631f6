"""The stage config: its schema (the one declaration both sides share) and how a job builds it.

A job (API model) plus its resolved inputs -> the stage config the training side reads. Pure and
shared: the operator puts the result in a ConfigMap, the local runner (and the torchx components)
in a file. The training side (forgeline.jobs.contract) parses it strictly and checks it before
paying for torch.

A contract field named like a field of its API block (API_BLOCKS) is that setting: its default is
read from the API model here (`api_default`) and jobs.contract checks the API's bounds on it
(`api_bounds`), so the two sides cannot disagree about either. The few fields whose value the
builder computes are listed in BUILT with the reason. tests/unit/test_contract_parity.py drives
every boundary value the API accepts through both.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from forgeline.api import evalspec
from forgeline.api import spec as api
from forgeline.api.fields import ApiModel
from forgeline.api.kinds import EvalJob, Job, LoRAJob, PretrainJob, RLHFJob

CONTRACT_VERSION = 1

Stage = Literal["pretrain", "reward", "rlhf", "lora", "eval"]
SyntheticKind = Literal["corpus", "preferences", "prompts", "sft"]


def api_default(model: type[ApiModel], name: str) -> Any:
    """The API's default for a setting: the contract's default is this value, declared once."""
    return model.model_fields[name].get_default(call_default_factory=True)


@dataclass(frozen=True)
class Bounds:
    """An API field's numeric bounds (None: unbounded) and, for strings and lists, its length bounds."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = None
    max_length: int | None = None


def field_metadata(model: type[ApiModel], name: str) -> list[Any]:
    """The constraints on `model.name`: its own, and those of an optional annotated type (`Uri | None`)."""
    info = model.model_fields[name]
    found = list(info.metadata)
    optional = typing.get_origin(info.annotation) in (typing.Union, types.UnionType)
    for arg in typing.get_args(info.annotation) if optional else ():
        if typing.get_origin(arg) is Annotated:
            for extra in typing.get_args(arg)[1:]:
                found.extend(getattr(extra, "metadata", [extra]))
    return found


def field_bounds(model: type[ApiModel], name: str) -> Bounds:
    """The bounds pydantic enforces on `model.name` (its Field(ge=..., ...) metadata)."""
    found: dict[str, Any] = {}
    for meta in field_metadata(model, name):
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            value = getattr(meta, key, None)
            if value is not None:
                found[key] = value
    return Bounds(**found)


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
    layers: int
    hidden_size: int
    heads: int
    vocab_size: int
    context_length: int
    family: Literal["llama"] = api_default(api.ModelArchitecture, "family")
    kv_heads: int | None = api_default(api.ModelArchitecture, "kv_heads")
    intermediate_size: int | None = api_default(api.ModelArchitecture, "intermediate_size")


@dataclass(frozen=True)
class TokenizerConfig:
    uri: str | None = api_default(api.Tokenizer, "uri")
    vocab_size: int = 512


@dataclass(frozen=True)
class SyntheticData:
    kind: SyntheticKind
    examples: int = api_default(api.SyntheticData, "examples")
    seed: int = api_default(api.SyntheticData, "seed")


@dataclass(frozen=True)
class DataConfig:
    uri: str | None = api_default(api.Data, "uri")
    format: Literal["jsonl", "txt", "parquet", "datasets", "auto"] = api_default(api.Data, "format")
    text_field: str = api_default(api.Data, "text_field")
    prompt_field: str = api_default(api.Data, "prompt_field")
    chosen_field: str = api_default(api.Data, "chosen_field")
    rejected_field: str = api_default(api.Data, "rejected_field")
    completion_field: str = api_default(api.Data, "completion_field")
    messages_field: str = api_default(api.Data, "messages_field")
    synthetic: SyntheticData | None = None
    eval_fraction: float = api_default(api.Data, "eval_fraction")


# Learning rates that suit each stage when the spec leaves it out; RL needs a far smaller step.
DEFAULT_LEARNING_RATE = {"pretrain": 3e-3, "reward": 1e-3, "rlhf": 2e-4, "lora": 3e-3}


@dataclass(frozen=True)
class TrainingConfig:
    max_steps: int | None = 200
    epochs: float | None = None
    batch_size: int = api_default(api.Training, "batch_size")
    learning_rate: float = DEFAULT_LEARNING_RATE["pretrain"]
    precision: Literal["auto", "fp32", "bf16", "fp16"] = api_default(api.Training, "precision")
    checkpoint_interval: int = api_default(api.Training, "checkpoint_interval")
    keep_checkpoints: int = api_default(api.Training, "keep_checkpoints")
    seed: int = api_default(api.Training, "seed")
    log_interval: int = api_default(api.Training, "log_interval")
    strategy: Literal["ddp", "fsdp"] = api_default(api.Training, "strategy")
    gradient_accumulation: int = api_default(api.Training, "gradient_accumulation")
    warmup_steps: int = api_default(api.Training, "warmup_steps")
    lr_scheduler: Literal["cosine", "linear", "constant"] = api_default(api.Training, "lr_scheduler")
    gradient_checkpointing: bool = api_default(api.Training, "gradient_checkpointing")
    eval_interval: int = api_default(api.Training, "eval_interval")


@dataclass(frozen=True)
class LoraSettings:
    r: int = api_default(api.LoRASettings, "r")
    alpha: int = api_default(api.LoRASettings, "alpha")
    dropout: float = api_default(api.LoRASettings, "dropout")
    target_modules: list[str] = field(default_factory=lambda: api_default(api.LoRASettings, "target_modules"))
    merge: bool = api_default(api.LoRASettings, "merge")


@dataclass(frozen=True)
class RlhfSettings:
    reward_model: ArtifactRef | None = None  # absent exactly for dpo
    algorithm: Literal["rloo", "grpo", "dpo"] = api_default(api.RLHFSettings, "algorithm")
    generations_per_prompt: int = api_default(api.RLHFSettings, "generations_per_prompt")
    max_completion_length: int = api_default(api.RLHFSettings, "max_completion_length")
    kl_beta: float = api_default(api.RLHFSettings, "kl_beta")


@dataclass(frozen=True)
class EvalModelRef:
    """One model under evaluation: its name in the results and its artifact."""

    name: str
    uri: str
    digest: str | None = None


@dataclass(frozen=True)
class EvalSettings:
    """The eval stage's settings: its models, the judge, sampling (api Generation), best-of-N."""

    models: list[EvalModelRef]
    baseline: str
    reward_model: ArtifactRef | None = None
    best_of_n: list[int] = field(default_factory=lambda: api_default(evalspec.EvalSpec, "best_of_n"))
    prompts: int = api_default(evalspec.EvalData, "prompts")
    max_new_tokens: int = api_default(evalspec.Generation, "max_new_tokens")
    temperature: float = api_default(evalspec.Generation, "temperature")
    top_p: float = api_default(evalspec.Generation, "top_p")
    seed: int = api_default(evalspec.Generation, "seed")


# The contract section each API block feeds: its fields of the same name are the same setting.
API_BLOCKS: dict[str, tuple[type[Any], type[ApiModel]]] = {
    "model_config": (ModelConfig, api.ModelArchitecture),
    "tokenizer": (TokenizerConfig, api.Tokenizer),
    "data": (DataConfig, api.Data),
    "data.synthetic": (SyntheticData, api.SyntheticData),
    "training": (TrainingConfig, api.Training),
    "lora": (LoraSettings, api.LoRASettings),
    "rlhf": (RlhfSettings, api.RLHFSettings),
    "eval": (EvalSettings, evalspec.Generation),
}


class Built(typing.NamedTuple):
    """A contract field the builder computes rather than copies from its API twin."""

    why: str
    api_upper_bound: bool = True  # False: the computed value may exceed the API field's maximum


# Their contract default serves hand-written configs only (the builder always sets them).
BUILT: dict[str, Built] = {
    "training.batch_size": Built(
        "global per optimizer step: the spec's per-process batchSize x gradientAccumulation x world size",
        api_upper_bound=False,
    ),
    "training.max_steps": Built("the spec setting neither maxSteps nor epochs means one epoch"),
    "training.epochs": Built("the spec setting neither maxSteps nor epochs means one epoch"),
    "training.learning_rate": Built("unset in the spec: a per-stage default (DEFAULT_LEARNING_RATE)"),
    "tokenizer.vocab_size": Built("unset in the spec: the architecture's vocabSize"),
    "data.synthetic.kind": Built("unset in the spec: the stage's own kind (synthetic_kind; dpo: preferences)"),
}


def api_bounds(section: str, name: str) -> Bounds | None:
    """The API's bounds on contract field `section.name`; None when no API field is that setting."""
    block = API_BLOCKS.get(section)
    if block is None or name not in block[1].model_fields:
        return None
    bounds = field_bounds(block[1], name)
    built = BUILT.get(f"{section}.{name}")
    if built is not None and not built.api_upper_bound:
        bounds = Bounds(ge=bounds.ge, gt=bounds.gt, min_length=bounds.min_length)
    return bounds


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
    eval: EvalSettings | None = None
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- building

SYNTHETIC_KIND: dict[str, SyntheticKind] = {
    "pretrain": "corpus",
    "reward": "preferences",
    "rlhf": "prompts",
    "lora": "sft",
    "eval": "prompts",  # the eval stage reads prompts, text and pairs of the synthetic task alike
}


def synthetic_kind(job: Job) -> SyntheticKind:
    """The synthetic data a job generates by default: DPO learns from preference pairs, not prompts."""
    if isinstance(job, RLHFJob) and job.spec.rlhf.algorithm == "dpo":
        return "preferences"
    return SYNTHETIC_KIND[job.stage]


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
    if isinstance(job, EvalJob):
        return build_eval_config(
            job,
            attempt=attempt,
            output=output,
            inputs=inputs,
            observability=ObservabilityConfig(metrics_port, termination_message_path),
            endpoint=endpoint,
        )
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
            kind=data.synthetic.kind or synthetic_kind(job),
            examples=data.synthetic.examples,
            seed=data.synthetic.seed,
        )
    training = spec.training
    rlhf = None
    if isinstance(job, RLHFJob):
        settings = spec.rlhf
        reward = inputs.get("rewardModel")  # dpo has none
        rlhf = RlhfSettings(
            reward_model=ArtifactRef(reward.uri, reward.digest) if reward else None,
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


def build_eval_config(
    job: EvalJob,
    *,
    attempt: int,
    output: str,
    inputs: dict[str, ResolvedInput],
    observability: ObservabilityConfig,
    endpoint: str | None,
) -> StageConfig:
    """An EvalJob's stage config: `inputs` maps models.<name> and judge to their artifacts."""
    spec = job.spec
    models = []
    for m in spec.models:
        found = inputs[f"models.{m.name}"]
        models.append(EvalModelRef(m.name, found.uri, found.digest))
    judge = inputs.get("judge")
    data = spec.data
    synthetic = SyntheticData("prompts", data.synthetic.examples, data.synthetic.seed) if data.synthetic else None
    return StageConfig(
        stage="eval",
        output_uri=output,
        run=RunRef(
            namespace=job.metadata.namespace or "default", name=job.metadata.name, kind=job.kind, attempt=attempt
        ),
        storage=StorageConfig(endpoint=endpoint or spec.storage.endpoint),
        data=DataConfig(**{**data.model_dump(exclude={"synthetic", "prompts"}), "synthetic": synthetic}),
        training=TrainingConfig(seed=spec.generation.seed),
        eval=EvalSettings(
            models=models,
            baseline=spec.baseline,
            reward_model=ArtifactRef(judge.uri, judge.digest) if judge else None,
            best_of_n=list(spec.best_of_n),
            prompts=data.prompts,
            **spec.generation.model_dump(),
        ),
        observability=observability,
    )


def stage_config_dict(job: Job, **kwargs: Any) -> dict[str, Any]:
    return build_stage_config(job, **kwargs).to_dict()
