"""The stage contract: config schema, exit codes, artifact manifest and result summary.

This module is the one interface between the control side (the operator's render step and the
local runner, which write the config) and the training side (the stage modules, which read it).
docs/stage-contract.md is its prose twin; change both together. The config dataclasses and their
cross-field rules live here; the exit codes and errors (errors.py), the strict parser (schema.py)
and the manifest and result summary (manifest.py) are re-exported, so callers need one import.

It imports nothing heavier than the standard library on purpose: the operator imports it to build
configs, and a stage must be able to reject a bad config (exit 2) before paying for torch.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from forgeline.api.fields import URI_SCHEMES

# The config schema is declared once, in the API package, beside the job models it is built from
# (forgeline.api.stageconfig); this side parses and checks it.
from forgeline.api.stageconfig import (
    API_BLOCKS,
    ArtifactRef,
    Bounds,
    DataConfig,
    EvalModelRef,
    EvalSettings,
    LoraSettings,
    ModelConfig,
    ObservabilityConfig,
    RlhfSettings,
    RunRef,
    Stage,
    StageConfig,
    StorageConfig,
    SyntheticData,
    TokenizerConfig,
    TrainingConfig,
    api_bounds,
)
from forgeline.jobs.errors import (
    EXIT_BAD_CONFIG,
    EXIT_MISSING_INPUT,
    EXIT_OK,
    ConfigError,
    ContractError,
    InputError,
)
from forgeline.jobs.manifest import (
    CONTRACT_VERSION,
    DEFAULT_TERMINATION_PATH,
    MANIFEST_NAME,
    RESULT_MAX_BYTES,
    FileEntry,
    Manifest,
    error_summary,
    normalise_digest,
    peek_termination_path,
    result_summary,
    sha256_hex,
    termination_path,
    write_termination_message,
)
from forgeline.jobs.schema import build

__all__ = [
    "CONTRACT_VERSION",
    "DEFAULT_TERMINATION_PATH",
    "EXIT_BAD_CONFIG",
    "EXIT_MISSING_INPUT",
    "EXIT_OK",
    "MANIFEST_NAME",
    "RESULT_MAX_BYTES",
    "ArtifactRef",
    "ConfigError",
    "ContractError",
    "DataConfig",
    "EvalModelRef",
    "EvalSettings",
    "FileEntry",
    "InputError",
    "LoraSettings",
    "Manifest",
    "ModelConfig",
    "ObservabilityConfig",
    "RlhfSettings",
    "RunRef",
    "Stage",
    "StageConfig",
    "StorageConfig",
    "SyntheticData",
    "TokenizerConfig",
    "TrainingConfig",
    "error_summary",
    "load_config",
    "normalise_digest",
    "parse_config",
    "peek_termination_path",
    "result_summary",
    "sha256_hex",
    "termination_path",
    "validate",
    "write_termination_message",
]


def _check_uri(uri: str, path: str) -> None:
    if "://" not in uri or uri.split("://", 1)[0] not in URI_SCHEMES:
        schemes = " or ".join(f"{s}://" for s in URI_SCHEMES)
        raise ConfigError(path, f"must be an {schemes} URI (the schemes the trainer reads); got {uri!r}")


def _check_bounds(value: Any, bounds: Bounds, path: str) -> None:
    if value is None:
        return
    if isinstance(value, str | list):
        if bounds.min_length is not None and len(value) < bounds.min_length:
            raise ConfigError(path, f"must have at least {bounds.min_length} item(s) or character(s)")
        if bounds.max_length is not None and len(value) > bounds.max_length:
            raise ConfigError(path, f"must have at most {bounds.max_length} items or characters; got {len(value)}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    for op, limit, ok in (
        (">=", bounds.ge, lambda v, b: v >= b),
        (">", bounds.gt, lambda v, b: v > b),
        ("<=", bounds.le, lambda v, b: v <= b),
        ("<", bounds.lt, lambda v, b: v < b),
    ):
        if limit is not None and not ok(value, limit):
            raise ConfigError(path, f"must be {op} {limit}; got {value}")


def _check_api_bounds(cfg: StageConfig) -> None:
    """Every field that is an API setting stays within the API's bounds (one declaration: the API model)."""
    for section in API_BLOCKS:
        obj: Any = cfg
        for part in section.split("."):
            obj = getattr(obj, part) if obj is not None else None
        if obj is None:
            continue
        for f in dataclasses.fields(obj):
            bounds = api_bounds(section, f.name)
            if bounds is not None:
                _check_bounds(getattr(obj, f.name), bounds, f"{section}.{f.name}")


def _check_eval(cfg: StageConfig) -> None:
    """The eval stage reads its models from `eval.models`, not `model`."""
    e = cfg.eval
    assert e is not None
    if cfg.model is not None or cfg.model_config is not None:
        raise ConfigError("model", "must be absent for stage eval (its models are eval.models)")
    names = [m.name for m in e.models]
    if not names:
        raise ConfigError("eval.models", "needs at least one model")
    if len(set(names)) != len(names):
        raise ConfigError("eval.models", f"names must be unique; got {names}")
    if e.baseline not in names:
        raise ConfigError("eval.baseline", f"must be one of the models ({', '.join(names)}); got {e.baseline!r}")
    for i, m in enumerate(e.models):
        _check_uri(m.uri, f"eval.models[{i}].uri")
    if e.reward_model is not None:
        _check_uri(e.reward_model.uri, "eval.reward_model.uri")
    if not e.best_of_n or any(n < 1 for n in e.best_of_n):
        raise ConfigError("eval.best_of_n", f"must be a non-empty list of N >= 1; got {e.best_of_n}")
    if e.prompts < 1:
        raise ConfigError("eval.prompts", f"must be >= 1; got {e.prompts}")


def validate(cfg: StageConfig) -> StageConfig:
    """Range checks (the API's bounds) and the cross-field rules the type system cannot express."""
    if cfg.version != CONTRACT_VERSION:
        raise ConfigError("version", f"this trainer speaks contract version {CONTRACT_VERSION}")
    _check_uri(cfg.output_uri, "output_uri")
    if cfg.model is not None:
        _check_uri(cfg.model.uri, "model.uri")
    if (cfg.eval is not None) != (cfg.stage == "eval"):
        raise ConfigError("eval", "is set exactly when stage is eval")
    if cfg.eval is not None:
        _check_eval(cfg)
    elif (cfg.model is None) == (cfg.model_config is None):
        raise ConfigError("model", "exactly one of 'model' and 'model_config' must be set")
    if cfg.model is None and cfg.stage not in ("pretrain", "eval"):
        raise ConfigError("model", f"stage {cfg.stage} needs an input model")
    _check_api_bounds(cfg)
    if cfg.model_config is not None:
        mc = cfg.model_config
        if mc.hidden_size % mc.heads:
            raise ConfigError("model_config.heads", "must divide model_config.hidden_size")
        if mc.kv_heads is not None and mc.heads % mc.kv_heads:
            raise ConfigError("model_config.kv_heads", "must divide model_config.heads")
    d = cfg.data
    if (d.uri is None) == (d.synthetic is None):
        raise ConfigError("data", "exactly one of 'data.uri' and 'data.synthetic' must be set")
    if d.uri is not None:
        _check_uri(d.uri, "data.uri")
    if cfg.tokenizer.uri is not None:
        _check_uri(cfg.tokenizer.uri, "tokenizer.uri")
    t = cfg.training
    if t.max_steps is None and t.epochs is None:
        raise ConfigError("training.max_steps", "set max_steps or epochs")
    if (cfg.lora is not None) != (cfg.stage == "lora"):
        raise ConfigError("lora", "is set exactly when stage is lora")
    if (cfg.rlhf is not None) != (cfg.stage == "rlhf"):
        raise ConfigError("rlhf", "is set exactly when stage is rlhf")
    if cfg.rlhf is not None:
        r = cfg.rlhf
        if (r.reward_model is None) != (r.algorithm == "dpo"):
            raise ConfigError(
                "rlhf.reward_model", "is required for rloo and grpo, and must be absent for dpo (it learns from pairs)"
            )
        if r.reward_model is not None:
            _check_uri(r.reward_model.uri, "rlhf.reward_model.uri")
        if r.algorithm in ("grpo", "dpo") and r.kl_beta <= 0:
            raise ConfigError(
                "rlhf.kl_beta", f"must be > 0 for algorithm {r.algorithm} (the KL penalty against the reference)"
            )
    if not 0 <= cfg.observability.metrics_port < 65536:
        raise ConfigError("observability.metrics_port", "must be a port number or 0")
    return cfg


def parse_config(raw: str | bytes | dict[str, Any]) -> StageConfig:
    """Parse and validate a stage config; raises ConfigError naming the field."""
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError("<root>", f"not valid JSON: {exc}") from None
    return validate(build(StageConfig, raw, ""))


def load_config(path: str) -> StageConfig:
    try:
        with open(path, "rb") as fh:
            return parse_config(fh.read())
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
