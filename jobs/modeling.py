"""Model construction, loading, wrapping and saving for the stages.

The tokenizer always travels with the model (saved into the same directory), because transformers
loads the processing class from the model path and every downstream stage needs both.

Input models are any `AutoModelForCausalLM` decoder (Llama, Qwen2, GPT-2, ...): nothing here
names a model class, a config field or a module path. The few family differences are handled
once: a tokenizer without a pad token pads with EOS (GPT-2, many base models), the context length
comes from the config's `max_position_embeddings` (GPT-2 maps its `n_positions` onto it), and
FSDP shards the classes the model itself declares as its blocks (`_no_split_modules`).
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


# Longest sequence a stage trains on when the model allows more (a Qwen2 config says 32768): a
# packed pretraining block or a truncated pair longer than this costs memory, not quality, here.
MAX_CONTEXT = 2048


def load_tokenizer(path: Path, uri: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(uri, f"no loadable tokenizer in the artifact ({exc})") from None
    if tokenizer.eos_token is None:
        raise InputError(uri, "the tokenizer has no eos_token; set one in its tokenizer_config.json")
    if tokenizer.pad_token is None:  # GPT-2 and many base models: batches pad with EOS, masked out
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: Path, uri: str, pad_token_id: int | None = None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise InputError(uri, f"no loadable causal LM in the artifact ({exc})") from None
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad_token_id
    return model


def name_by_uri(model: Any, uri: str) -> None:
    """Name a loaded model by its input URI, not the scratch path it was read from: peft copies the
    name into adapter_config.json and the model card, which must mean something on another machine.
    Not for a model handed to trl, which loads its reference model from this name."""
    model.name_or_path = uri
    model.config._name_or_path = uri


def context_length(model: nn.Module, default: int = 512) -> int:
    """Tokens per sequence: the model's position limit (any family), at most MAX_CONTEXT."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    return min(int(limit or default), MAX_CONTEXT)


def block_classes(model: nn.Module) -> set[str]:
    """The class names of the model's repeated blocks, as the model declares them."""
    return set(getattr(model, "_no_split_modules", None) or [])


def wrap(rt: Runtime, model: nn.Module) -> nn.Module:
    """DDP by default; FSDP2 (per-decoder-layer sharding) when the config asks for it."""
    model.to(rt.device)
    if rt.world == 1:
        return model
    if rt.cfg.training.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        blocks = block_classes(model)
        for module in [m for m in model.modules() if type(m).__name__ in blocks]:
            fully_shard(module)
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
