"""A job (API model) plus its resolved inputs -> the stage config the training side reads.

Pure and shared: the operator puts the result in a ConfigMap, the local runner in a file. Both
sides of the contract (forgeline.jobs.contract) validate it, so a mismatch fails loudly here in
tests rather than in a pod.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forgeline.jobs.contract import (
    ArtifactRef,
    DataConfig,
    LoraSettings,
    ModelConfig,
    ObservabilityConfig,
    RlhfSettings,
    RunRef,
    StageConfig,
    StorageConfig,
    SyntheticData,
    TokenizerConfig,
    TrainingConfig,
)
from forgeline.operator.api.kinds import Job, LoRAJob, PretrainJob, RLHFJob

SYNTHETIC_KIND = {"pretrain": "corpus", "reward": "preferences", "rlhf": "prompts", "lora": "sft"}
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
