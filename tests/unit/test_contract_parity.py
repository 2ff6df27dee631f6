"""The API and the stage contract agree on every training setting, at every boundary.

Cases are generated from the pydantic models (bounds from Field metadata, Literal values, URI
schemes), so a field added to an API block is covered without touching this file:

- every value the API accepts at a boundary (min, max, default, each Literal value, each scheme)
  goes manifest -> parse_job -> build_stage_config -> JSON -> jobs.contract.parse_config and is
  accepted, arriving unchanged where the contract field is the same setting;
- every value just outside a bound, and every scheme the trainer cannot read, is rejected by the
  API naming the field, and by the contract naming its twin when it has one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel

from forgeline.api import evalspec
from forgeline.api import spec as api
from forgeline.api.fields import URI, URI_SCHEMES, ApiModel
from forgeline.api.kinds import KINDS, Job, model_sources
from forgeline.api.stageconfig import (
    API_BLOCKS,
    BUILT,
    ResolvedInput,
    api_default,
    build_stage_config,
    field_bounds,
    field_metadata,
    output_uri,
)
from forgeline.api.validate import InvalidManifest, parse_job
from forgeline.jobs.contract import ConfigError, StageConfig, parse_config

BASE_SPECS: dict[str, dict[str, Any]] = {
    "PretrainJob": {
        "model": {"config": {"layers": 2, "hiddenSize": 64, "heads": 4, "vocabSize": 512, "contextLength": 64}},
        "data": {"synthetic": {}},
    },
    "RewardModelJob": {"model": {"fromJob": {"kind": "PretrainJob", "name": "base"}}, "data": {"synthetic": {}}},
    "RLHFJob": {
        "rlhf": {
            "policy": {"fromJob": {"kind": "PretrainJob", "name": "base"}},
            "rewardModel": {"fromJob": {"name": "judge"}},
        },
        "data": {"synthetic": {}},
    },
    "LoRAJob": {"model": {"uri": "s3://store/base"}, "data": {"synthetic": {}}},
    "EvalJob": {"models": [{"name": "base", "uri": "s3://store/base"}], "data": {"synthetic": {}}, "baseline": "base"},
}
ALL = tuple(k for k in KINDS if k != "EvalJob")  # the training kinds; an EvalJob has its own blocks
# Where each training-relevant API block sits in a manifest, by kind.
BLOCKS: list[tuple[type[ApiModel], str, tuple[str, ...]]] = [
    (api.Training, "spec.training", ALL),
    (api.Data, "spec.data", ALL),
    (api.SyntheticData, "spec.data.synthetic", ALL),
    (api.ModelArchitecture, "spec.model.config", ("PretrainJob",)),
    (api.Tokenizer, "spec.tokenizer", ("PretrainJob",)),
    (api.LoRASettings, "spec.lora", ("LoRAJob",)),
    (api.RLHFSettings, "spec.rlhf", ("RLHFJob",)),
    (api.Resources, "spec.resources", ALL),
    (api.ModelInput, "spec.model", ("RewardModelJob", "LoRAJob")),
    (api.PretrainModel, "spec.model", ("PretrainJob",)),
    (api.ModelInput, "spec.rlhf.policy", ("RLHFJob",)),
    (api.RewardModelInput, "spec.rlhf.rewardModel", ("RLHFJob",)),
    (api.Storage, "spec.storage", ALL),
    (evalspec.Generation, "spec.generation", ("EvalJob",)),
    (evalspec.EvalData, "spec.data", ("EvalJob",)),
]
# Of Resources, the fields that feed the world size (the contract's global batch); the rest are pod
# settings the trainer never sees.
WORLD_SIZE_FIELDS = {"nodes", "gpus_per_node", "procs_per_node"}
# Of the other blocks, only the fields the trainer reads (storage: the output URI; its endpoint and
# secret reach the pod as settings the contract passes through unchecked).
ONLY_FIELDS: dict[type[ApiModel], set[str]] = {api.Resources: WORLD_SIZE_FIELDS, api.Storage: {"output_uri"}}
SECTION_OF = {model: section for section, (_, model) in API_BLOCKS.items()}
# URIs outside the API blocks above that land in the contract, and where.
URI_TWINS = {
    ("spec.model", "uri"): "model.uri",
    ("spec.rlhf.policy", "uri"): "model.uri",
    ("spec.rlhf.rewardModel", "uri"): "rlhf.reward_model.uri",
    ("spec.storage", "output_uri"): "output_uri",
}
UNREADABLE_URIS = ("gs://bucket/x", "https://host/x", "az://c/x", "memory://x", "bucket/no-scheme")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def exclusive_groups(model: type[ApiModel]) -> list[set[str]]:
    """Fields an exactly-one rule ties together (camelCase)."""
    return [set(re.findall(r"has\(self\.(\w+)\)", r.cel)) for r in model.rules if r.cel.endswith("== 1")]


def unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Annotated:
        return unwrap(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return unwrap(inner)
    return annotation


def is_uri(model: type[BaseModel], name: str) -> bool:
    return any(getattr(m, "pattern", None) == URI for m in field_metadata(model, name))


def step(value: float, tp: type, up: bool) -> float:
    if tp is int:
        return value + (1 if up else -1)
    return math.nextafter(value, math.inf if up else -math.inf)


def accepted_values(model: type[ApiModel], name: str) -> list[Any]:
    tp = unwrap(model.model_fields[name].annotation)
    default = None if model.model_fields[name].is_required() else api_default(model, name)
    b = field_bounds(model, name)
    values: list[Any] = [] if default is None else [default]
    if typing.get_origin(tp) is Literal:
        values += [v for v in typing.get_args(tp) if v is not None]
    elif tp is bool:
        values += [True, False]
    elif tp in (int, float):
        values += [b.ge, b.le]
        values += [step(b.gt, tp, up=True)] if b.gt is not None else []
        values += [step(b.lt, tp, up=False)] if b.lt is not None else []
        values = [tp(v) for v in values if v is not None]
    elif tp is str and is_uri(model, name):
        values += [f"{s}:///tmp/x" if s == "file" else f"{s}://bucket/x" for s in URI_SCHEMES]
    elif tp is str:
        values += ["a" * (b.min_length or 1), "a" * (b.max_length or 8)]
    elif typing.get_origin(tp) is list:
        values += [[f"m{i}" for i in range(n)] for n in (b.min_length, b.max_length) if n]
    return values


def rejected_values(model: type[ApiModel], name: str) -> list[Any]:
    tp = unwrap(model.model_fields[name].annotation)
    b = field_bounds(model, name)
    if tp in (int, float):
        out = [step(b.ge, tp, up=False) if b.ge is not None else None, b.gt]
        out += [step(b.le, tp, up=True) if b.le is not None else None, b.lt]
        return [tp(v) for v in out if v is not None]
    if tp is str and is_uri(model, name):
        return list(UNREADABLE_URIS)
    if tp is str or typing.get_origin(tp) is list:
        empty: Any = "" if tp is str else []
        item = "a" if tp is str else ["m"]
        out = [empty] if b.min_length else []
        return out + ([item * (b.max_length + 1)] if b.max_length else [])
    return []


def training_fields(model: type[ApiModel]) -> list[str]:
    names = [n for n, f in model.model_fields.items() if not _is_block(f.annotation)]
    only = ONLY_FIELDS.get(model)
    return [n for n in names if n in only] if only is not None else names


def _is_block(annotation: Any) -> bool:
    tp = unwrap(annotation)
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def fit(model: type[ApiModel], name: str, value: Any, block: dict[str, Any]) -> None:
    """Companion values that keep a boundary value clear of the block's cross-field rules."""
    if model is api.ModelArchitecture and name in ("heads", "kv_heads"):
        block.update(heads=value, hiddenSize=value * 8)
    if model is api.ModelArchitecture and name == "hidden_size":
        block["heads"] = 1
    if model is api.Resources and name == "procs_per_node":
        block["gpusPerNode"] = 0  # one process per GPU; on CPU any count
    if model is api.RLHFSettings and name == "kl_beta" and value == 0:
        block["algorithm"] = "rloo"  # grpo needs a KL penalty
    if model is api.RLHFSettings and name == "algorithm" and value == "dpo":
        block.pop("rewardModel", None)  # dpo takes no reward model


def fit_spec(model: type[ApiModel], name: str, value: Any, spec: dict[str, Any]) -> None:
    """Companion values that keep a boundary value clear of the spec's rules across blocks."""
    if model is api.Tokenizer and name == "vocab_size" and "model" in spec and "config" in spec["model"]:
        spec["model"]["config"]["vocabSize"] = max(spec["model"]["config"]["vocabSize"], value)
    if model is api.RLHFSettings and name == "generations_per_prompt":
        spec.setdefault("training", {})["batchSize"] = value  # one prompt's group per step
    if model is api.Training and name == "batch_size" and "rlhf" in spec:
        spec["rlhf"]["generationsPerPrompt"] = 2 if value % 2 == 0 else spec["rlhf"].get("generationsPerPrompt", 4)
        if value % 2:
            spec["rlhf"]["algorithm"] = "dpo"  # an odd batch holds no whole group of completions
            spec["rlhf"].pop("rewardModel", None)


@dataclass(frozen=True)
class Case:
    kind: str
    model: type[ApiModel]
    where: str
    name: str
    value: Any

    @property
    def api_path(self) -> str:
        return f"{self.where}.{camel(self.name)}"

    @property
    def contract_path(self) -> str | None:
        if (self.where, self.name) in URI_TWINS:
            return URI_TWINS[(self.where, self.name)]
        section = SECTION_OF.get(self.model)
        return f"{section}.{self.name}" if section else None

    def __str__(self) -> str:
        return f"{self.kind}:{self.api_path}={self.value!r}"[:120]

    def manifest(self) -> dict[str, Any]:
        body = {
            "apiVersion": "forgeline.io/v1alpha1",
            "kind": self.kind,
            "metadata": {"name": "parity"},
            "spec": copy.deepcopy(BASE_SPECS[self.kind]),
        }
        block: dict[str, Any] = body
        for part in self.where.split("."):
            block = block.setdefault(part, {})
        key = camel(self.name)
        for group in exclusive_groups(self.model):
            if key in group:
                for other in group - {key}:
                    block.pop(other, None)
        block[key] = self.value
        fit(self.model, self.name, self.value, block)
        fit_spec(self.model, self.name, self.value, body["spec"])
        return body


def cases(values: typing.Callable[[type[ApiModel], str], list[Any]]) -> list[Case]:
    out = []
    for model, where, kinds in BLOCKS:
        for name in training_fields(model):
            for value in values(model, name):
                out.extend(Case(kind, model, where, name, value) for kind in kinds)
    return out


def resolve(job: Job) -> dict[str, ResolvedInput]:
    """What the operator would hand the builder: a URI source as written, a job's output from the store."""
    return {
        role: ResolvedInput(source.uri if source.uri else f"file:///store/{source.from_job.name}")
        for role, source in model_sources(job).items()
        if source.uri or source.from_job
    }


def through_contract(body: dict[str, Any]) -> tuple[Job, StageConfig]:
    job = parse_job(body)
    built = build_stage_config(
        job, attempt=1, output=output_uri("s3://store", job), inputs=resolve(job), metrics_port=9400
    )
    return job, parse_config(json.dumps(built.to_dict()))


def contract_value(cfg: StageConfig, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


ACCEPTED = cases(accepted_values)
REJECTED = cases(rejected_values)


def test_cases_cover_every_field_of_every_block() -> None:
    covered = {(c.model, c.name) for c in ACCEPTED}
    for model, _, _ in BLOCKS:
        for name in training_fields(model):
            assert (model, name) in covered, f"no boundary value generated for {model.__name__}.{name}"
    assert len(ACCEPTED) > 300 and len(REJECTED) > 100


@pytest.mark.parametrize("case", ACCEPTED, ids=str)
def test_every_boundary_value_the_api_accepts_passes_the_contract(case: Case) -> None:
    job, cfg = through_contract(case.manifest())
    path = case.contract_path
    if path is not None and path not in BUILT:
        got = contract_value(cfg, path)
        assert got == case.value, f"{case}: the contract's {path} is {got!r}"
    if job.kind == "EvalJob":
        return  # it trains nothing: no global batch
    t, res = job.spec.training, job.spec.resources
    assert cfg.training.batch_size == t.batch_size * t.gradient_accumulation * res.nodes * res.procs


@pytest.mark.parametrize("case", REJECTED, ids=str)
def test_every_value_the_contract_rejects_is_rejected_by_the_api_naming_the_field(case: Case) -> None:
    with pytest.raises(InvalidManifest) as refused:
        parse_job(case.manifest())
    paths = [e.path for e in refused.value.errors]
    assert case.api_path in paths, f"{case}: the API's errors name {paths}"
    twin = case.contract_path
    if twin is None or (twin in BUILT and not BUILT[twin].api_upper_bound):
        return  # no contract twin, or one the builder computes (the global batch has no upper bound)
    # The same value poked into a config the API accepts: the contract refuses it too, naming its twin.
    valid = Case(case.kind, case.model, case.where, case.name, accepted_values(case.model, case.name)[0])
    raw = through_contract(valid.manifest())[1].to_dict()
    *parents, leaf = twin.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[leaf] = case.value
    with pytest.raises(ConfigError) as err:
        parse_config(json.dumps(raw))
    assert err.value.field_path == twin


@pytest.mark.parametrize(
    ("kind", "where", "block", "api_path", "twin"),
    [
        ("PretrainJob", "spec.model.config", {"heads": 3}, "spec.model.config.hiddenSize", "model_config.heads"),
        ("PretrainJob", "spec.model.config", {"kvHeads": 3}, "spec.model.config.kvHeads", "model_config.kv_heads"),
        ("RLHFJob", "spec.rlhf", {"algorithm": "grpo", "klBeta": 0.0}, "spec.rlhf.klBeta", "rlhf.kl_beta"),
        ("RLHFJob", "spec.rlhf", {"algorithm": "dpo"}, "spec.rlhf.rewardModel", "rlhf.reward_model"),
    ],
)
def test_cross_field_rules_of_the_contract_have_an_api_twin(
    kind: str, where: str, block: dict[str, Any], api_path: str, twin: str
) -> None:
    body = base_manifest(kind)
    node = body
    for part in where.split("."):
        node = node[part]
    node.update(block)
    with pytest.raises(InvalidManifest) as refused:
        parse_job(body)
    assert api_path in [e.path for e in refused.value.errors]
    raw = through_contract(base_manifest(kind))[1].to_dict()
    section, _, _ = twin.partition(".")
    raw[section].update({camel_to_snake(k): v for k, v in block.items()})
    with pytest.raises(ConfigError) as err:
        parse_config(json.dumps(raw))
    assert err.value.field_path == twin


def base_manifest(kind: str) -> dict[str, Any]:
    return Case(kind, api.Training, "spec.training", "seed", 0).manifest()


def camel_to_snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def test_contract_defaults_are_the_api_defaults_except_what_the_builder_computes() -> None:
    for section, (contract_cls, model) in API_BLOCKS.items():
        for f in dataclasses.fields(contract_cls):
            path = f"{section}.{f.name}"
            if f.name not in model.model_fields or path in BUILT:
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                assert model.model_fields[f.name].is_required(), f"{path}: required in the contract only"
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            assert default == api_default(model, f.name), f"{path}: contract default {default!r}"


def test_checkpoint_interval_zero_means_no_periodic_checkpoints_on_both_sides() -> None:
    field = api.Training.model_fields["checkpoint_interval"]
    assert field.description is not None and "0: no periodic checkpoints" in field.description
    body = base_manifest("PretrainJob")
    body["spec"]["training"]["checkpointInterval"] = 0
    _, cfg = through_contract(body)
    assert cfg.training.checkpoint_interval == 0
