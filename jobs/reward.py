"""Reward stage: a sequence-classification reward model initialised from an input LM (any causal LM,
which gets a one-label head, or a `num_labels=1` sequence classifier), trained on
preference pairs (prompt, chosen, rejected) with the Bradley-Terry loss -log sigmoid(r_c - r_r).

Equivalent to trl's RewardTrainer (same loss, same input format: prompt + response + EOS, right
padding, score read at the last non-pad token) but run in our own loop, so checkpoints, resume
and throughput follow the same rules as every other stage. The scoring format is written into
the artifact (`forgeline_reward.json`) so the RLHF stage scores completions exactly as the model
was trained: trl's GRPO/RLOO scoring appends no EOS, which measurably lowers accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from forgeline.jobs import data as datamod
from forgeline.jobs import modeling
from forgeline.jobs import records as recordsmod
from forgeline.jobs.contract import InputError
from forgeline.jobs.loop import LoopSpec, sharded_eval, train_loop
from forgeline.jobs.runtime import Runtime, exit_process, stage_main

SCORING_FILE = "forgeline_reward.json"
SCORING = {"text": "prompt + completion + eos_token", "padding_side": "right", "add_special_tokens": False}


def encode_pairs(
    tokenizer: Any, triples: list[tuple[str, str, str]], max_len: int
) -> list[tuple[list[int], list[int]]]:
    """(prompt, chosen, rejected) texts (records.preference_triples) -> ids of prompt + answer + EOS."""
    eos = tokenizer.eos_token

    def ids(texts: list[str]) -> list[list[int]]:
        return [x[:max_len] for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    chosen = ids([p + c + eos for p, c, _ in triples])
    rejected = ids([p + r + eos for p, _, r in triples])
    return list(zip(chosen, rejected, strict=True))


def pad_right(seqs: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def pair_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected rows travel in one forward pass: [chosen..., rejected...]."""
    scores = model(**batch).logits[:, 0].float()
    half = scores.shape[0] // 2
    return scores[:half], scores[half:]


def load_reward_model(path: Path, uri: str, pad_token_id: int) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a classifier head with num_labels != 1
        raise InputError(
            uri, f"cannot load a reward model (a causal LM or a sequence classifier with num_labels=1) ({exc})"
        ) from None
    model.config.pad_token_id = pad_token_id
    return model


def train(rt: Runtime) -> tuple[Path, dict[str, Any]]:
    cfg = rt.cfg
    assert cfg.model is not None
    records = datamod.load_records(cfg.data, rt.storage)
    recordsmod.preflight(records, cfg.data, cfg.stage)  # exit 2 in seconds, before any model is fetched
    base = rt.fetch_input("model", cfg.model)
    tokenizer = modeling.load_tokenizer(base, cfg.model.uri)
    model = load_reward_model(base, cfg.model.uri, tokenizer.pad_token_id)
    if recordsmod.needs_chat_template(records) and recordsmod.ensure_chat_template(tokenizer) and rt.is_main:
        print("forgeline: the tokenizer has no chat template; using forgeline's default (docs/stage-contract.md)")
    train_recs, eval_recs = datamod.split(records, cfg.data)
    max_len = modeling.context_length(model)
    pairs = encode_pairs(tokenizer, recordsmod.preference_triples(tokenizer, train_recs, cfg.data), max_len)
    held = recordsmod.preference_triples(tokenizer, eval_recs or train_recs[:200], cfg.data)
    eval_pairs = encode_pairs(tokenizer, held, max_len)
    wrapped = modeling.wrap(rt, model)
    pad = tokenizer.pad_token_id
    micro = max(1, cfg.training.batch_size // (rt.world * cfg.training.gradient_accumulation))

    def batch_of(source: list[tuple[list[int], list[int]]], indices: list[int]) -> dict[str, torch.Tensor]:
        chosen = [source[i][0] for i in indices]
        rejected = [source[i][1] for i in indices]
        return pad_right(chosen + rejected, pad, rt.device)

    def make_batch(indices: list[int]) -> tuple[dict[str, torch.Tensor], int]:
        batch = batch_of(pairs, indices)
        return batch, int(batch["attention_mask"].sum())

    def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        chosen, rejected = pair_scores(m, batch)
        return -F.logsigmoid(chosen - rejected).mean()

    def accuracy_items(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = pair_scores(wrapped, batch_of(eval_pairs, indices))
        return (chosen > rejected).double(), torch.ones_like(chosen, dtype=torch.float64)

    def loss_items(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = pair_scores(wrapped, batch_of(eval_pairs, indices))
        return -F.logsigmoid(chosen - rejected).double(), torch.ones_like(chosen, dtype=torch.float64)

    def evaluate() -> dict[str, float]:
        wrapped.eval()
        acc = sharded_eval(rt, len(eval_pairs), micro, accuracy_items)
        rt.metrics.accuracy.labels(cfg.stage).set(acc)
        return {"eval_accuracy": acc, "eval_loss": sharded_eval(rt, len(eval_pairs), micro, loss_items)}

    metrics = train_loop(rt, LoopSpec(wrapped, len(pairs), make_batch, loss_fn, evaluate))
    metrics.update(train_pairs=len(pairs), eval_pairs=len(eval_pairs))
    out = rt.scratch / "output"
    modeling.save_pretrained(rt, wrapped, tokenizer, out)
    if rt.is_main:
        (out / SCORING_FILE).write_text(json.dumps(SCORING))
    return out, metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main("reward", train, argv)


if __name__ == "__main__":
    exit_process(main())
