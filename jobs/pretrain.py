"""Pretrain stage: a causal LM from scratch (Llama-style config) or continued from an input model
(any `AutoModelForCausalLM` decoder, from a forgeline artifact or a plain Hugging Face directory).

Documents are tokenized, each followed by EOS, concatenated and cut into context-length blocks
(packing: no padding tokens, so every token of compute is a training token). From scratch, the
tokenizer is trained on the training split by rank 0 and broadcast, so all ranks agree byte for
byte. The reported held-out loss is nats per token over the eval split, before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from forgeline.jobs import data as datamod
from forgeline.jobs import modeling
from forgeline.jobs import records as recordsmod
from forgeline.jobs.loop import LoopSpec, sharded_eval, token_nll, train_loop
from forgeline.jobs.runtime import Runtime, exit_process, stage_main


def shared_tokenizer(rt: Runtime, texts: list[str]) -> Any:
    """Train on rank 0, ship the saved files to every rank (nodes share no filesystem)."""
    from transformers import AutoTokenizer

    files: dict[str, bytes] | None = None
    if rt.is_main:
        out = rt.scratch / "tokenizer-trained"
        datamod.train_tokenizer(texts, rt.cfg.tokenizer.vocab_size).save_pretrained(str(out))
        files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    files = rt.broadcast(files)
    assert files is not None
    local = rt.scratch / "tokenizer"
    local.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (local / name).write_bytes(blob)
    return AutoTokenizer.from_pretrained(str(local))


def pack(tokenizer: Any, texts: list[str], length: int) -> torch.Tensor:
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    n = len(stream) // length
    return torch.tensor(stream[: n * length], dtype=torch.long).view(n, length)


def train(rt: Runtime) -> tuple[Path, dict[str, Any]]:
    cfg = rt.cfg
    records = datamod.load_records(cfg.data, rt.storage)
    recordsmod.preflight(records, cfg.data, cfg.stage)
    train_recs, eval_recs = datamod.split(records, cfg.data)
    train_texts = [r[cfg.data.text_field] for r in train_recs]
    eval_texts = [r[cfg.data.text_field] for r in eval_recs]
    if cfg.model is not None:
        base = rt.fetch_input("model", cfg.model)
        tokenizer = modeling.load_tokenizer(base, cfg.model.uri)
        model = modeling.load_causal_lm(base, cfg.model.uri, tokenizer.pad_token_id)
    else:
        if cfg.tokenizer.uri is not None:
            from forgeline.jobs.contract import ArtifactRef

            tokenizer = modeling.load_tokenizer(
                rt.fetch_input("tokenizer", ArtifactRef(cfg.tokenizer.uri)), cfg.tokenizer.uri
            )
        else:
            tokenizer = shared_tokenizer(rt, train_texts)
        assert cfg.model_config is not None
        model = modeling.build_llama(cfg.model_config, tokenizer)
    length = modeling.context_length(model)
    blocks = pack(tokenizer, train_texts, length)
    eval_blocks = pack(tokenizer, eval_texts, length) if eval_texts else blocks[:64]
    if rt.device.type == "cuda":  # page-locked host memory: the copy to the GPU overlaps compute
        blocks = blocks.pin_memory()
    wrapped = modeling.wrap(rt, model)
    micro = max(1, cfg.training.batch_size // (rt.world * cfg.training.gradient_accumulation))

    def make_batch(indices: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        x = blocks[indices].to(rt.device, non_blocking=True)
        return {"input_ids": x, "labels": x}, x.numel()

    def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return m(**batch).loss

    def eval_items(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = eval_blocks[indices].to(rt.device)
        return token_nll(wrapped(input_ids=x).logits, x)

    def evaluate() -> dict[str, float]:
        wrapped.eval()
        return {"eval_loss": sharded_eval(rt, len(eval_blocks), micro, eval_items)}

    metrics = train_loop(rt, LoopSpec(wrapped, len(blocks), make_batch, loss_fn, evaluate))
    metrics.update(
        train_blocks=len(blocks),
        eval_blocks=len(eval_blocks),
        context_length=length,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    out = rt.scratch / "output"
    modeling.save_pretrained(rt, wrapped, tokenizer, out)
    return out, metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main("pretrain", train, argv)


if __name__ == "__main__":
    exit_process(main())
