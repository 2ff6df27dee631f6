"""DPO (`rlhf.algorithm: dpo`): the policy learns from preference pairs directly, no reward model.

trl's DPOTrainer with the sigmoid loss; `rlhf.kl_beta` is DPO's beta, and the reference is the
input policy itself (a frozen copy loaded from the same artifact), so the implicit reward
beta * (log pi(y|x) - log pi_ref(y|x)) starts at exactly 0 for every answer.

The stage evaluates on held-out pairs before, every `training.eval_interval` steps, and after:
- `preference_accuracy`: the share of held-out pairs whose chosen answer gets the higher implicit
  reward (a tie counts one half, so the untrained policy scores exactly 0.5);
- `eval_loss`: the DPO loss on the held-out pairs (log 2 before training);
- for synthetic data, the hidden true reward of completions sampled on the held-out prompts, the
  check that the policy itself got better, not only its ranking of fixed answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from forgeline.jobs import data as datamod
from forgeline.jobs import modeling
from forgeline.jobs import records as recordsmod
from forgeline.jobs.contract import ConfigError
from forgeline.jobs.hf_bridge import CheckpointMirror, ProgressCallback, restore_latest, save_trained
from forgeline.jobs.loop import eval_due, sharded_eval, token_nll, total_steps, trainer_common_args
from forgeline.jobs.lora import sft_batch
from forgeline.jobs.runtime import Runtime
from forgeline.jobs.scoring import PolicyEval, sample_completions

EVAL_SAMPLES = 8
EVAL_PROMPTS = 64

Pair = tuple[recordsmod.Example, recordsmod.Example]


def encode(tokenizer: Any, triples: list[tuple[str, str, str]], max_len: int) -> list[Pair]:
    """Held-out pairs as (chosen, rejected) examples labelled on the answer + EOS only."""

    def example(prompt: str, answer: str) -> recordsmod.Example:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        a = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        return (p + a)[:max_len], ([-100] * len(p) + a)[:max_len]

    return [(example(p, c), example(p, r)) for p, c, r in triples]


class PairEvaluator:
    """Implicit-reward accuracy and DPO loss of a policy against the frozen reference, on held-out pairs."""

    def __init__(self, rt: Runtime, reference: torch.nn.Module, pairs: list[Pair], pad: int, beta: float) -> None:
        self.rt, self.reference, self.pairs, self.pad, self.beta = rt, reference.eval(), pairs, pad, beta
        self.micro = 16

    def _logps(self, model: torch.nn.Module, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.pairs[i][0] for i in indices] + [self.pairs[i][1] for i in indices]
        batch = sft_batch(items, self.pad, self.rt.device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, _ = token_nll(logits, batch["labels"])
        half = len(indices)
        return -nll[:half], -nll[half:]

    def margins(self, policy: torch.nn.Module, indices: list[int]) -> torch.Tensor:
        chosen, rejected = self._logps(policy, indices)
        ref_chosen, ref_rejected = self._logps(self.reference, indices)
        return self.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))

    def __call__(self, policy: torch.nn.Module) -> dict[str, float]:
        was_training = policy.training
        policy.eval()

        def accuracy(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            m = self.margins(policy, indices).double()
            return (m > 0).double() + 0.5 * (m == 0).double(), torch.ones_like(m)

        def loss(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            m = self.margins(policy, indices).double()
            return -F.logsigmoid(m), torch.ones_like(m)

        out = {
            "preference_accuracy": sharded_eval(self.rt, len(self.pairs), self.micro, accuracy),
            "eval_loss": sharded_eval(self.rt, len(self.pairs), self.micro, loss),
        }
        policy.train(was_training)
        return out


class PeriodicEval(TrainerCallback):
    """`training.eval_interval` for the trl stages (dpo, rloo, grpo): `evaluate(model)` during training,
    as progress events, the eval gauges and `history`. Every rank runs it at the same step."""

    def __init__(self, rt: Runtime, evaluate: Callable[[torch.nn.Module], dict[str, float]], total: int) -> None:
        self.rt, self.evaluate, self.total = rt, evaluate, total
        self.model: torch.nn.Module | None = None
        self.history: list[dict[str, Any]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.model is None or not eval_due(state.global_step, self.total, self.rt.cfg.training.eval_interval):
            return
        values = self.evaluate(self.model)
        self.history.append({"step": state.global_step, **values})
        self.rt.metrics.on_eval(values)
        self.rt.emit(
            "progress", stage=self.rt.cfg.stage, step=state.global_step, total=self.total, loss=None,
            tokens_per_s=None, metrics=values,
        )  # fmt: skip


def sampled_eval(rt: Runtime, policy: torch.nn.Module, tokenizer: Any, prompts: list[str]) -> PolicyEval:
    """Completions on held-out prompts (fixed seed), scored by the hidden reward; gathered from all ranks."""
    assert rt.cfg.rlhf is not None
    mine = prompts[rt.rank :: rt.world]
    _, completions = sample_completions(
        policy,
        tokenizer,
        mine,
        EVAL_SAMPLES,
        rt.cfg.rlhf.max_completion_length,
        rt.cfg.training.seed + rt.rank,
        rt.device,
    )
    parts = rt.all_gather([(datamod.true_reward(c), datamod.real_word_share(c)) for c in completions])
    values = [v for part in parts for v in part]
    return PolicyEval([0.0] * len(values), [v[0] for v in values], [v[1] for v in values])


def summary(prefix: str, pairs: dict[str, float], sampled: PolicyEval | None) -> dict[str, float]:
    out = {f"{prefix}_preference_accuracy": pairs["preference_accuracy"], f"{prefix}_loss": pairs["eval_loss"]}
    if sampled is not None:
        full = sampled.summary(prefix)
        out.update({k: v for k, v in full.items() if "true_reward" in k or "word_share" in k or k.endswith("samples")})
    return out


def train(rt: Runtime, records: list[dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    cfg, t = rt.cfg, rt.cfg.training
    assert cfg.model is not None and cfg.rlhf is not None
    policy_dir = rt.fetch_input("model", cfg.model)
    tokenizer = modeling.load_tokenizer(policy_dir, cfg.model.uri)
    if recordsmod.needs_chat_template(records) and recordsmod.ensure_chat_template(tokenizer) and rt.is_main:
        print("forgeline: the tokenizer has no chat template; using forgeline's default (docs/stage-contract.md)")
    train_recs, eval_recs = datamod.split(records, cfg.data)
    train_triples = recordsmod.preference_triples(tokenizer, train_recs, cfg.data)
    eval_triples = recordsmod.preference_triples(tokenizer, eval_recs or train_recs[:200], cfg.data)
    policy = modeling.load_causal_lm(policy_dir, cfg.model.uri, tokenizer.pad_token_id).to(rt.device)
    reference = modeling.load_causal_lm(policy_dir, cfg.model.uri, tokenizer.pad_token_id).to(rt.device)
    for p in reference.parameters():
        p.requires_grad_(False)
    max_len = modeling.context_length(policy)
    evaluate = PairEvaluator(
        rt, reference, encode(tokenizer, eval_triples, max_len), tokenizer.pad_token_id, cfg.rlhf.kl_beta
    )
    synthetic = cfg.data.synthetic is not None  # the hidden reward is defined for the synthetic language only
    prompts = sorted({p for p, _, _ in eval_triples})[:EVAL_PROMPTS]
    total = total_steps(rt, len(train_triples))
    per_device, rest = divmod(t.batch_size, rt.world * t.gradient_accumulation)
    if rest:
        raise ConfigError(
            "training.batch_size",
            f"{t.batch_size} must be divisible by world size x gradient_accumulation "
            f"({rt.world * t.gradient_accumulation})",
        )

    before_pairs = evaluate(policy)
    before = summary("eval_before", before_pairs, sampled_eval(rt, policy, tokenizer, prompts) if synthetic else None)
    rt.metrics.on_eval(before_pairs)
    rt.emit(
        "progress",
        stage=cfg.stage,
        step=0,
        total=total,
        loss=None,
        tokens_per_s=None,
        metrics={**before_pairs, **before},
    )

    output_dir = rt.scratch / "hf"
    args = DPOConfig(
        **trainer_common_args(rt, output_dir, total, per_device),
        beta=cfg.rlhf.kl_beta,
        max_length=max_len,
        loss_type=["sigmoid"],
    )
    resume = restore_latest(rt, output_dir)
    mean_len = sum(len(p) + (len(c) + len(r)) / 2 for p, c, r in train_triples) / max(1, len(train_triples))
    tokens_per_step = int(t.batch_size * 2 * mean_len / 4)  # ~4 characters per token: an estimate for tokens/s
    periodic = PeriodicEval(rt, evaluate, total)
    tokenizer.padding_side = "right"
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in train_triples]),
        processing_class=tokenizer,
        callbacks=[ProgressCallback(rt, total, tokens_per_step), CheckpointMirror(rt), periodic],
    )
    trainer.remove_callback(PrinterCallback)  # our ProgressCallback owns stdout
    periodic.model = trainer.model
    result = trainer.train(resume_from_checkpoint=resume)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    after_pairs = evaluate(trained)
    after = summary("eval_after", after_pairs, sampled_eval(rt, trained, tokenizer, prompts) if synthetic else None)
    rt.metrics.on_eval(after_pairs)
    rt.emit(
        "progress",
        stage=cfg.stage,
        step=total,
        total=total,
        loss=None,
        tokens_per_s=None,
        metrics={**after_pairs, **after},
    )
    metrics: dict[str, Any] = {
        "final_loss": result.training_loss,
        "steps": total,
        "algorithm": "dpo",
        "beta": cfg.rlhf.kl_beta,
        "train_pairs": len(train_triples),
        "eval_pairs": len(eval_triples),
        "gradient_checkpointing": bool(getattr(trained, "is_activation_checkpointing", False)),
        "eval_loss_initial": before_pairs["eval_loss"],
        "eval_loss_final": after_pairs["eval_loss"],
        "eval_history": [{"step": 0, **before_pairs}, *periodic.history, {"step": total, **after_pairs}],
        **before,
        **after,
    }
    return save_trained(rt, trained, tokenizer), metrics
