"""The EvalJob's spec: which models to compare, the judge, the evaluation data, sampling, best-of-N.

An EvalJob trains nothing. It samples completions from every model on the same held-out prompts
with the same seed, has the reward model (the judge) score them, and reports per model, with
standard errors: held-out loss, RM score, win rate against the baseline, a Bradley-Terry rating,
the best-of-N curve, the judge's preference accuracy and, on synthetic data, the hidden true
reward (forgeline.jobs.evalstats, forgeline.jobs.eval; docs/evaluation.md). Other stages may wait
on its result through a quality gate (forgeline.api.gate).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from forgeline.api.fields import DNS_LABEL, ApiModel, Label, Rule, Uri, exactly_one
from forgeline.api.spec import LanguageModelJobRef, Resources, RewardModelInput, RunPolicy, Storage

MAX_MODELS = 8
MAX_BEST_OF = 64
# A model's name appears in metric keys (winRate.<name>) and gate conditions: a short DNS label.
MODEL_NAME_LENGTH = 20


class EvalModel(ApiModel):
    """One model under evaluation: a name for the tables, and where it comes from."""

    name: str = Field(
        min_length=1,
        max_length=MODEL_NAME_LENGTH,
        pattern=DNS_LABEL,
        description=f"name in the results, metrics and gate conditions (a DNS label of at most {MODEL_NAME_LENGTH} "
        "characters, unique in models); required",
    )
    from_job: LanguageModelJobRef | None = Field(
        default=None,
        description="the output of a PretrainJob, LoRAJob or RLHFJob in this namespace (this job waits for it to "
        "succeed); set exactly one source",
    )
    uri: Uri | None = Field(
        default=None, description="a committed artifact or model directory (s3:// or file://); set exactly one source"
    )

    rules = (exactly_one("fromJob", "uri"),)


class EvalSyntheticData(ApiModel):
    """The synthetic task (forgeline.jobs.data): prompts, text and preference pairs, with the hidden reward."""

    examples: int = Field(
        default=2000,
        ge=10,
        le=10_000_000,
        description="records generated of each kind (prompts, text, pairs) before the held-out share is taken "
        "(count); default 2000",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="generator seed; use the training stages' to share their split; default 0",
    )


class EvalData(ApiModel):
    """Evaluation records: prompts to sample from, and optionally text (held-out loss) and preference
    pairs (the judge's accuracy). Only the held-out share is read: the records that the same
    evalFraction keeps out of every training stage."""

    uri: Uri | None = Field(
        default=None,
        description="a file, or a prefix of *.<format> shards (s3:// or file://); a record may carry a prompt, a "
        "text, and a chosen/rejected pair; set exactly one of uri, synthetic",
    )
    synthetic: EvalSyntheticData | None = Field(
        default=None,
        description="the synthetic task instead (adds the hidden true reward); set exactly one of uri, synthetic",
    )
    format: Literal["jsonl", "txt", "parquet", "datasets", "auto"] = Field(
        default="jsonl",
        description="record format at uri: jsonl, txt, parquet, datasets or auto (as for the training stages); "
        "default jsonl",
    )
    text_field: Label = Field(default="text", description="record field holding held-out text; default text")
    prompt_field: Label = Field(default="prompt", description="record field holding a prompt; default prompt")
    chosen_field: Label = Field(
        default="chosen", description="record field holding the preferred answer; default chosen"
    )
    rejected_field: Label = Field(
        default="rejected", description="record field holding the rejected answer; default rejected"
    )
    eval_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        description="the held-out share, chosen by prompt hash as in training: set it to the training stages' value "
        "so no evaluated record was trained on; default 0.1",
    )
    prompts: int = Field(
        default=64, ge=2, le=100_000, description="held-out prompts evaluated at most (count); default 64"
    )

    rules = (exactly_one("uri", "synthetic"),)


class Generation(ApiModel):
    """How completions are sampled: the same for every model, from the same seed."""

    max_new_tokens: int = Field(
        default=16, ge=1, le=8192, description="tokens generated per completion at most; default 16"
    )
    temperature: float = Field(default=1.0, gt=0.0, le=10.0, description="sampling temperature; default 1.0")
    top_p: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="nucleus sampling: the smallest token set of this mass; default 1.0 (off)",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="sampling seed; the same seed gives the same completions and the same results; default 0",
    )


def _names_unique(spec: EvalSpec) -> bool:
    names = [m.name for m in spec.models]
    return len(set(names)) == len(names)


class EvalSpec(ApiModel):
    """Models compared on held-out data, judged by a reward model."""

    models: list[EvalModel] = Field(
        min_length=1,
        max_length=MAX_MODELS,
        description=f"the language models compared (1 to {MAX_MODELS}), each a named fromJob or uri; immutable",
    )
    reward_model: RewardModelInput | None = Field(
        default=None,
        description="the judge: a RewardModelJob's output or a URI; it scores completions (RM score, win rates, "
        "ratings, best-of-N); without it only held-out loss and the true reward are measured; immutable",
    )
    data: EvalData = Field(description="the evaluation records; immutable")
    generation: Generation = Field(
        default_factory=Generation, description="sampling settings; every field has a default; immutable"
    )
    best_of_n: list[Annotated[int, Field(ge=1, le=MAX_BEST_OF)]] = Field(
        default_factory=lambda: [1, 2, 4],
        min_length=1,
        max_length=8,
        description=f"the N of the best-of-N curve (1 to {MAX_BEST_OF} each); the largest is also the completions "
        "sampled per prompt; default [1, 2, 4]; immutable",
    )
    baseline: str = Field(
        min_length=1,
        max_length=MODEL_NAME_LENGTH,
        description="name of the model the others are compared against (win rates; rating 1000); one of "
        "models[].name; immutable",
    )
    resources: Resources = Field(
        default_factory=Resources, description="the gang and its pods; default one node, one GPU; immutable"
    )
    storage: Storage = Field(
        default_factory=Storage, description="where results.json goes; default: the operator's store; immutable"
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="retries, deadlines, TTL, suspend; the only mutable block"
    )

    rules = (
        Rule(
            cel="self.models.exists(m, m.name == self.baseline)",
            message="baseline must be the name of one of the models",
            check=lambda m: any(x.name == m.baseline for x in m.models),
            field="baseline",
        ),
        Rule(
            cel="self.models.all(a, self.models.exists_one(b, b.name == a.name))",
            message="model names must be unique",
            check=_names_unique,
            field="models",
        ),
    )

    @property
    def samples_per_prompt(self) -> int:
        """Completions sampled per prompt and model: enough for the largest N."""
        return max(self.best_of_n)
