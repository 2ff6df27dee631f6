"""The supervised training loop shared by pretrain, reward and lora.

A plain loop rather than transformers' Trainer: the pretrain stage must keep within 5 % of a
bare DDP loop's throughput (bench/train_overhead.py), and checkpoints must land in our artifact
layout with manifests, which a hand-rolled loop does directly instead of mirroring Trainer's
`checkpoint-N` directories.

Determinism and resume: `training.batch_size` is the global batch per optimizer step, split over
ranks and accumulation micro-steps, and the examples of step s are a pure function of
(seed, s): epoch e visits a seeded permutation. So the data position is just the step, a resumed
run sees exactly the batches the killed one would have, and the loss curve does not depend on
the world size.
"""

from __future__ import annotations

import contextlib
import math
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from forgeline.jobs.checkpoint import Checkpointer
from forgeline.jobs.contract import ConfigError
from forgeline.jobs.runtime import Runtime

Batch = dict[str, torch.Tensor]


class StepSampler:
    """Global positions [s*B, (s+1)*B) of an endless stream of seeded epoch permutations."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int, world: int, accum: int) -> None:
        self.n, self.batch, self.seed = n, global_batch, seed
        self.rank, self.world, self.accum = rank, world, accum
        self.micro = global_batch // (world * accum)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {
                epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            }
        return self._perms[epoch]

    def indices(self, step: int, micro_step: int) -> list[int]:
        start = step * self.batch + (micro_step * self.world + self.rank) * self.micro
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + self.micro)]


@dataclass
class LoopSpec:
    """What a stage plugs into the loop."""

    model: nn.Module  # already wrapped (DDP/FSDP)
    n_examples: int
    make_batch: Callable[[list[int]], tuple[Batch, int]]  # indices -> (batch on device, tokens)
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor]
    evaluate: Callable[[], dict[str, float]]


def total_steps(rt: Runtime, n_examples: int) -> int:
    t = rt.cfg.training
    steps = [t.max_steps] if t.max_steps else []
    if t.epochs:
        steps.append(max(1, math.ceil(t.epochs * n_examples / t.batch_size)))
    return min(steps)


# Where cosine decays to, as a share of the peak rate (transformers' cosine_with_min_lr min_lr_rate).
MIN_LR_RATE = 0.1
# training.lr_scheduler as transformers' Trainer names it (the RLHF and DPO stages), the same curves as lr_lambda.
HF_SCHEDULERS: dict[str, tuple[str, dict[str, float]]] = {
    "cosine": ("cosine_with_min_lr", {"min_lr_rate": MIN_LR_RATE}),
    "linear": ("linear", {}),
    "constant": ("constant_with_warmup", {}),
}


def lr_lambda(warmup: int, total: int, kind: str = "cosine") -> Callable[[int], float]:
    """The multiplier of the peak rate at a step: linear warm-up over `warmup` steps, then `kind`:
    cosine decay to MIN_LR_RATE at the last step, linear decay to 0, or constant."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "constant":
            return 1.0
        if kind == "linear":
            return 1.0 - progress
        return MIN_LR_RATE + (1 - MIN_LR_RATE) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def trainer_schedule_args(t: Any) -> dict[str, Any]:
    """training.lr_scheduler and warmup_steps as transformers TrainingArguments."""
    name, kwargs = HF_SCHEDULERS[t.lr_scheduler]
    return {"lr_scheduler_type": name, "lr_scheduler_kwargs": dict(kwargs), "warmup_steps": t.warmup_steps}


def trainer_common_args(rt: Runtime, output_dir: Any, total: int, per_device: int) -> dict[str, Any]:
    """Our training settings as transformers TrainingArguments (the trl stages: RLOO, GRPO, DPO).

    Chosen from the hardware, not trl's defaults (bf16 and gradient checkpointing on, which fail or
    crawl on CPU)."""
    t = rt.cfg.training
    return dict(
        output_dir=str(output_dir),
        max_steps=total,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        **trainer_schedule_args(t),
        seed=t.seed,
        data_seed=t.seed,
        bf16=rt.precision == "bf16",
        fp16=rt.precision == "fp16",
        use_cpu=rt.device.type == "cpu",
        # transformers 5 names it activation_checkpointing (gradient_checkpointing is its deprecated alias,
        # which trl's configs default to True): both set, so neither default wins.
        gradient_checkpointing=t.gradient_checkpointing,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        report_to="none",
        logging_steps=t.log_interval,
        # checkpoint_interval 0: no periodic checkpoints (the output is still saved and committed at the end).
        save_strategy="steps" if t.checkpoint_interval else "no",
        save_steps=t.checkpoint_interval or 1,
        save_total_limit=t.keep_checkpoints,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        log_level="warning",
        ddp_timeout=1800,
        dataloader_num_workers=0,
    )


def enable_gradient_checkpointing(model: nn.Module) -> bool:
    """Turn on activation recomputation in every transformers model inside `model` (under DDP,
    FSDP or peft wrappers); returns whether the model now checkpoints."""
    from transformers import PreTrainedModel

    found = False
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            found = found or module.is_activation_checkpointing
    return found


def eval_due(step: int, total: int, interval: int) -> bool:
    """An evaluation during training: every `interval` steps, not at the last (the final one covers it)."""
    return bool(interval) and step % interval == 0 and step < total


def train_loop(rt: Runtime, spec: LoopSpec) -> dict[str, Any]:
    t = rt.cfg.training
    if t.batch_size % (rt.world * t.gradient_accumulation):
        raise ConfigError(
            "training.batch_size",
            f"{t.batch_size} is not divisible by world size {rt.world} "
            f"x gradient_accumulation {t.gradient_accumulation}",
        )
    total = total_steps(rt, spec.n_examples)
    rt.metrics.total_steps.labels(rt.cfg.stage).set(total)
    model = spec.model
    checkpointing = enable_gradient_checkpointing(model) if t.gradient_checkpointing else False
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, total, t.lr_scheduler))
    ckpt = Checkpointer(rt)
    sampler = StepSampler(spec.n_examples, t.batch_size, t.seed, rt.rank, rt.world, t.gradient_accumulation)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None

    state = ckpt.resume(model, optimizer, scheduler)
    start = int(state["step"]) if state else 0
    initial = dict(state["eval_initial"]) if state else spec.evaluate()
    # (step, eval metrics) of the evaluations during training; a resume carries the earlier ones.
    history: list[dict[str, Any]] = list(state.get("eval_history", [])) if state else []
    if not state:
        history.append({"step": 0, **initial})
        rt.metrics.on_eval(initial)
    rt.emit(
        "progress",
        stage=rt.cfg.stage,
        step=start,
        total=total,
        loss=None,
        tokens_per_s=None,
        metrics={f"{k}_initial": v for k, v in initial.items()},
    )

    window_loss = torch.zeros((), device=rt.device)
    window_steps, window_tokens = 0, 0
    window_start = time.perf_counter()  # wall clock: on a GPU only the loss read-out synchronises
    last_loss, tokens_total, train_time = float("nan"), 0, 0.0
    for step in range(start, total):
        began = time.perf_counter()
        model.train()
        step_tokens = 0
        for micro in range(t.gradient_accumulation):
            batch, ntok = spec.make_batch(sampler.indices(step, micro))
            step_tokens += ntok
            last_micro = micro == t.gradient_accumulation - 1
            sync = (
                contextlib.nullcontext()
                if last_micro or not hasattr(model, "no_sync")
                else typing.cast(Any, model).no_sync()
            )
            with sync:
                with rt.autocast():
                    loss = spec.loss_fn(model, batch) / t.gradient_accumulation
                (scaler.scale(loss) if scaler else loss).backward()
            window_loss += loss.detach()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - began
        step_tokens *= rt.world
        window_steps += 1
        window_tokens += step_tokens
        tokens_total += step_tokens
        rt.metrics.on_step(step + 1, step_tokens, elapsed)
        done = step + 1
        if done % t.log_interval == 0 or done == total:
            (loss_sum,) = rt.all_reduce_sum([float(window_loss)])
            last_loss = loss_sum / rt.world / window_steps
            window_time = time.perf_counter() - window_start
            train_time += window_time
            rt.metrics.on_log(last_loss)
            rt.emit(
                "progress",
                stage=rt.cfg.stage,
                step=done,
                total=total,
                loss=round(last_loss, 5),
                tokens_per_s=round(window_tokens / window_time, 1),
                metrics={"learning_rate": scheduler.get_last_lr()[0]},
            )
            window_loss.zero_()
            window_steps, window_tokens = 0, 0
            window_start = time.perf_counter()
        if eval_due(done, total, t.eval_interval):
            evaluating = time.perf_counter()
            evaluated = spec.evaluate()
            history.append({"step": done, **evaluated})
            rt.metrics.on_eval(evaluated)
            rt.emit("progress", stage=rt.cfg.stage, step=done, total=total, loss=None, tokens_per_s=None,
                    metrics=evaluated)  # fmt: skip
            window_start += time.perf_counter() - evaluating  # evaluation time is not training throughput
        # checkpoint_interval 0: no periodic checkpoints; the stage still commits its output at the end.
        if t.checkpoint_interval and done % t.checkpoint_interval == 0 and done < total:
            saving = time.perf_counter()
            ckpt.save(
                done,
                model,
                optimizer,
                scheduler,
                {
                    "eval_initial": initial,
                    "eval_history": history,
                    "data_position": {"step": done, "global_batch": t.batch_size},
                },
            )
            window_start += time.perf_counter() - saving  # storage time is not training throughput
    final = spec.evaluate()
    history.append({"step": total, **final})
    rt.metrics.on_eval(final)
    rt.emit("progress", stage=rt.cfg.stage, step=total, total=total, loss=None, tokens_per_s=None, metrics=final)
    metrics: dict[str, Any] = {
        "final_loss": last_loss,
        "steps": total,
        "resumed_from": start,
        "tokens_per_s": round(tokens_total / train_time, 1) if train_time else None,
        "gradient_checkpointing": checkpointing,
        "eval_history": history,
    }
    metrics.update({f"{k}_initial": v for k, v in initial.items()})
    metrics.update({f"{k}_final": v for k, v in final.items()})
    return metrics


def sharded_eval(
    rt: Runtime, n: int, micro: int, fn: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]
) -> float:
    """Mean of per-item values over n items split across ranks: sum(values) / sum(weights).

    Every rank runs the same number of forward passes (padding with a repeated item of weight 0),
    because DDP's buffer broadcast and FSDP's all-gathers are collectives inside forward.
    """
    per_rank = math.ceil(n / rt.world)
    mine = [rt.rank + rt.world * i for i in range(per_rank)]
    value, weight = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(mine), micro):
            chunk = mine[i : i + micro]
            valid = torch.tensor([j < n for j in chunk], dtype=torch.float64)
            with rt.autocast():
                v, w = fn([j if j < n else 0 for j in chunk])
            value += float((v.double().cpu() * valid).sum())
            weight += float((w.double().cpu() * valid).sum())
    total_v, total_w = rt.all_reduce_sum([value, weight])
    return total_v / max(total_w, 1e-12)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed next-token NLL and counted tokens (labels -100 are ignored)."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none"
    )
    mask = (shift_labels != -100).to(nll.dtype)
    return (nll * mask).sum(1), mask.sum(1)
