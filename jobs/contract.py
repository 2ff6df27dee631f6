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

import json
from typing import Any

# The config schema is declared once, in the API package, beside the job models it is built from
# (forgeline.api.stageconfig); this side parses and checks it.
from forgeline.api.stageconfig import (
    ArtifactRef,
    DataConfig,
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


def _positive(value: float | None, path: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(path, f"must be {'>= 0' if allow_zero else '> 0'}; got {value}")


def _check_uri(uri: str, path: str) -> None:
    if "://" not in uri or uri.split("://", 1)[0] not in ("file", "s3", "memory"):
        raise ConfigError(path, f"must be a file:// or s3:// URI; got {uri!r}")


def validate(cfg: StageConfig) -> StageConfig:
    """Cross-field and range checks the type system cannot express."""
    if cfg.version != CONTRACT_VERSION:
        raise ConfigError("version", f"this trainer speaks contract version {CONTRACT_VERSION}")
    _check_uri(cfg.output_uri, "output_uri")
    if cfg.model is not None:
        _check_uri(cfg.model.uri, "model.uri")
    if (cfg.model is None) == (cfg.model_config is None):
        raise ConfigError("model", "exactly one of 'model' and 'model_config' must be set")
    if cfg.model is None and cfg.stage != "pretrain":
        raise ConfigError("model", f"stage {cfg.stage} needs an input model")
    if cfg.model_config is not None:
        mc = cfg.model_config
        for name in ("layers", "hidden_size", "heads", "vocab_size", "context_length"):
            _positive(getattr(mc, name), f"model_config.{name}")
        _positive(mc.kv_heads, "model_config.kv_heads")
        _positive(mc.intermediate_size, "model_config.intermediate_size")
        if mc.hidden_size % mc.heads:
            raise ConfigError("model_config.heads", "must divide model_config.hidden_size")
    d = cfg.data
    if (d.uri is None) == (d.synthetic is None):
        raise ConfigError("data", "exactly one of 'data.uri' and 'data.synthetic' must be set")
    if d.uri is not None:
        _check_uri(d.uri, "data.uri")
    if d.synthetic is not None:
        _positive(d.synthetic.examples, "data.synthetic.examples")
    if not 0.0 <= d.eval_fraction < 1.0:
        raise ConfigError("data.eval_fraction", f"must be in [0, 1); got {d.eval_fraction}")
    t = cfg.training
    if t.max_steps is None and t.epochs is None:
        raise ConfigError("training.max_steps", "set max_steps or epochs")
    for name in (
        "max_steps",
        "epochs",
        "batch_size",
        "learning_rate",
        "checkpoint_interval",
        "keep_checkpoints",
        "log_interval",
        "gradient_accumulation",
    ):
        _positive(getattr(t, name), f"training.{name}")
    _positive(t.warmup_steps, "training.warmup_steps", allow_zero=True)
    _positive(cfg.tokenizer.vocab_size, "tokenizer.vocab_size")
    if (cfg.lora is not None) != (cfg.stage == "lora"):
        raise ConfigError("lora", "is set exactly when stage is lora")
    if cfg.lora is not None:
        _positive(cfg.lora.r, "lora.r")
        if not cfg.lora.target_modules:
            raise ConfigError("lora.target_modules", "must name at least one module")
    if (cfg.rlhf is not None) != (cfg.stage == "rlhf"):
        raise ConfigError("rlhf", "is set exactly when stage is rlhf")
    if cfg.rlhf is not None:
        _check_uri(cfg.rlhf.reward_model.uri, "rlhf.reward_model.uri")
        if cfg.rlhf.generations_per_prompt < 2:
            raise ConfigError("rlhf.generations_per_prompt", "must be >= 2 (group baselines need two)")
        _positive(cfg.rlhf.max_completion_length, "rlhf.max_completion_length")
        _positive(cfg.rlhf.kl_beta, "rlhf.kl_beta", allow_zero=cfg.rlhf.algorithm == "rloo")
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
