"""Model construction, loading, wrapping and saving for the stages.

The tokenizer always travels with the model (saved into the same directory), because transformers
loads the processing class from the model path and every downstream stage needs both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from forgeline.jobs.contract import ConfigError, InputError, ModelConfig
from forgeline.jobs.runtime import Runtime
from forgeline.jobs.storage import fresh_dir


def build_llama(mc: ModelConfig, tokenizer: Any) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    if mc.vocab_size < len(tokenizer):
        raise ConfigError(
            "model_config.vocab_size", f"is {mc.vocab_size} but the tokenizer has {len(tokenizer)} tokens"
        )
    config = LlamaConfig(
        vocab_size=mc.vocab_size,
        hidden_size=mc.hidden_size,
        num_hidden_layers=mc.layers,
        num_attention_heads=mc.heads,
        num_key_value_heads=mc.kv_heads or mc.heads,
        intermediate_size=mc.intermediate_size or 3 * mc.hidden_size,
        max_position_embeddings=mc.context_length,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def load_tokenizer(path: Path, uri: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(uri, f"no loadable tokenizer in the artifact ({exc})") from None


def load_causal_lm(path: Path, uri: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise InputError(uri, f"no loadable causal LM in the artifact ({exc})") from None


def context_length(model: nn.Module, default: int = 512) -> int:
    return int(getattr(model.config, "max_position_embeddings", default) or default)


def wrap(rt: Runtime, model: nn.Module) -> nn.Module:
    """DDP by default; FSDP2 (per-decoder-layer sharding) when the config asks for it."""
    model.to(rt.device)
    if rt.world == 1:
        return model
    if rt.cfg.training.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layers = getattr(getattr(model, "model", None), "layers", None) or []
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> Any:
    """The bare transformers model under a DDP wrapper (typed Any: callers use its HF methods)."""
    return model.module if hasattr(model, "module") else model


def save_pretrained(rt: Runtime, model: nn.Module, tokenizer: Any, out: Path) -> None:
    """Gather the full weights (collective under FSDP) and save model + tokenizer on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rt.is_main:
        fresh_dir(out)
        unwrap(model).save_pretrained(str(out), state_dict=state)
        tokenizer.save_pretrained(str(out))
    rt.barrier()
