"""RLHF stage: a policy from an input LM optimised against a reward model from a reward stage.

trl's RLOOTrainer by default: its KL penalty against the frozen reference policy is subtracted
from the reward (the InstructGPT formulation) and its leave-one-out baseline needs no critic.
GRPOTrainer is the option (`rlhf.algorithm: grpo`), with `kl_beta > 0` enforced by the contract
since GRPO's default of 0 drops the reference entirely. trl 1.x has no PPOTrainer.

Settings are chosen from the hardware, not trl's defaults (bf16 and gradient checkpointing on,
which fail or crawl on CPU). `training.batch_size` counts completions per optimizer step across
all ranks: batch_size / generations_per_prompt prompts per step.

The stage evaluates the policy before and after on held-out prompts (scoring.evaluate_policy)
and reports the reward model's mean score with its standard error, and, for synthetic data, the
hidden true reward and the share of real words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from forgeline.jobs import data as datamod
from forgeline.jobs import dpo, modeling
from forgeline.jobs import records as recordsmod
from forgeline.jobs.contract import ConfigError
from forgeline.jobs.hf_bridge import CheckpointMirror, ProgressCallback, restore_latest, save_trained
from forgeline.jobs.loop import total_steps, trainer_common_args
from forgeline.jobs.reward import load_reward_model
from forgeline.jobs.runtime import Runtime, exit_process, stage_main
from forgeline.jobs.scoring import PolicyEval, RewardScorer, evaluate_policy

EVAL_SAMPLES = 8


def trainer_args(rt: Runtime, output_dir: Path, total: int) -> Any:
    from trl import GRPOConfig, RLOOConfig

    cfg, t = rt.cfg, rt.cfg.training
    assert cfg.rlhf is not None
    r = cfg.rlhf
    per_device, rest = divmod(t.batch_size, rt.world * t.gradient_accumulation)
    if rest or t.batch_size % r.generations_per_prompt:
        raise ConfigError(
            "training.batch_size",
            f"{t.batch_size} must be divisible by world size x "
            f"gradient_accumulation ({rt.world * t.gradient_accumulation}) and by "
            f"rlhf.generations_per_prompt ({r.generations_per_prompt})",
        )
    common: dict[str, Any] = dict(
        **trainer_common_args(rt, output_dir, total, per_device),
        num_generations=r.generations_per_prompt,
        max_completion_length=r.max_completion_length,
        beta=r.kl_beta,
        temperature=1.0,
    )
    return (RLOOConfig if r.algorithm == "rloo" else GRPOConfig)(**common)


def distributed_eval(
    rt: Runtime, policy: torch.nn.Module, tokenizer: Any, scorer: RewardScorer, prompts: list[str], seed: int
) -> PolicyEval:
    assert rt.cfg.rlhf is not None
    mine = prompts[rt.rank :: rt.world]
    part = evaluate_policy(
        policy, tokenizer, scorer, mine, EVAL_SAMPLES, rt.cfg.rlhf.max_completion_length, seed + rt.rank, rt.device
    )
    parts = rt.all_gather(part)
    return PolicyEval(
        [x for p in parts for x in p.rm_scores],
        [x for p in parts for x in p.true_rewards],
        [x for p in parts for x in p.word_shares],
    )


def train(rt: Runtime) -> tuple[Path, dict[str, Any]]:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOTrainer, RLOOTrainer

    cfg = rt.cfg
    assert cfg.model is not None and cfg.rlhf is not None
    records = datamod.load_records(cfg.data, rt.storage)
    recordsmod.preflight(records, cfg.data, cfg.stage, cfg.rlhf.algorithm)  # exit 2 before any model is fetched
    if cfg.rlhf.algorithm == "dpo":
        return dpo.train(rt, records)
    assert cfg.rlhf.reward_model is not None  # the contract requires it for rloo and grpo
    policy_dir = rt.fetch_input("model", cfg.model)
    rm_dir = rt.fetch_input("reward_model", cfg.rlhf.reward_model)
    tokenizer = modeling.load_tokenizer(policy_dir, cfg.model.uri)
    tokenizer.padding_side = "left"
    rm_tokenizer = modeling.load_tokenizer(rm_dir, cfg.rlhf.reward_model.uri)
    scorer = RewardScorer(
        load_reward_model(rm_dir, cfg.rlhf.reward_model.uri, rm_tokenizer.pad_token_id), rm_tokenizer, rt.device
    )
    if recordsmod.needs_chat_template(records) and recordsmod.ensure_chat_template(tokenizer) and rt.is_main:
        print("forgeline: the tokenizer has no chat template; using forgeline's default (docs/stage-contract.md)")
    train_recs, eval_recs = datamod.split(records, cfg.data)
    train_prompts = recordsmod.prompt_texts(tokenizer, train_recs, cfg.data)
    held = recordsmod.prompt_texts(tokenizer, eval_recs, cfg.data)
    eval_prompts = sorted(set(held)) or sorted(set(train_prompts))[:16]
    policy = modeling.load_causal_lm(policy_dir, cfg.model.uri, tokenizer.pad_token_id).to(rt.device)
    total = total_steps(rt, len(train_prompts) * cfg.rlhf.generations_per_prompt)  # batch counts completions
    before = distributed_eval(rt, policy, tokenizer, scorer, eval_prompts, cfg.training.seed + 7)
    rt.emit(
        "progress",
        stage=cfg.stage,
        step=0,
        total=total,
        loss=None,
        tokens_per_s=None,
        metrics=before.summary("eval_before"),
    )

    output_dir = rt.scratch / "hf"
    args = trainer_args(rt, output_dir, total)
    resume = restore_latest(rt, output_dir)
    tokens_per_step = cfg.training.batch_size * cfg.rlhf.max_completion_length
    trainer_cls = RLOOTrainer if cfg.rlhf.algorithm == "rloo" else GRPOTrainer
    synthetic = cfg.data.synthetic is not None  # the hidden reward is defined for the synthetic language only

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        was_training = model.training
        values = distributed_eval(rt, model, tokenizer, scorer, eval_prompts, cfg.training.seed + 7).summary("eval")
        model.train(was_training)
        return {k: v for k, v in values.items() if synthetic or "true_reward" not in k}

    periodic = dpo.PeriodicEval(rt, evaluate, total)
    trainer = trainer_cls(
        model=policy,
        reward_funcs=scorer,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in train_prompts]),
        processing_class=tokenizer,
        callbacks=[ProgressCallback(rt, total, tokens_per_step), CheckpointMirror(rt), periodic],
    )
    trainer.remove_callback(PrinterCallback)  # our ProgressCallback owns stdout
    periodic.model = trainer.model
    result = trainer.train(resume_from_checkpoint=resume)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    after = distributed_eval(rt, trained, tokenizer, scorer, eval_prompts, cfg.training.seed + 7)
    final = {k: v for k, v in after.summary("eval").items() if synthetic or "true_reward" not in k}
    metrics: dict[str, Any] = {
        "final_loss": result.training_loss,
        "steps": total,
        "algorithm": cfg.rlhf.algorithm,
        "gradient_checkpointing": bool(getattr(trained, "is_activation_checkpointing", False)),
        "eval_history": [
            {"step": 0, **{k.replace("eval_before_", "eval_"): v for k, v in before.summary("eval_before").items()}},
            *periodic.history,
            {"step": total, **final},
        ],
        **before.summary("eval_before"),
        **after.summary("eval_after"),
    }
    kl = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    if kl:
        metrics["kl_final"] = kl[-1]
    if not synthetic:
        metrics = {k: v for k, v in metrics.items() if "true_reward" not in k}
        metrics["eval_history"] = [
            {k: v for k, v in h.items() if "true_reward" not in k} for h in metrics["eval_history"]
        ]
    return save_trained(rt, trained, tokenizer), metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main("rlhf", train, argv)


if __name__ == "__main__":
    exit_process(main())
