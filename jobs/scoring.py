"""Reward-model scoring in the trained format, and the policy evaluation RLHF reports.

`RewardScorer` is what trl's RLOO/GRPO trainers call as a reward function. It exists because
trl scores `prompt + completion` with no EOS while the reward model was trained on
`prompt + response + EOS` (reward.py); scoring in the trained format keeps the RM's accuracy.

`evaluate_policy` is independent of the trainer: fixed held-out prompts, a fixed sampling seed,
the same procedure for the starting and the trained policy, and the hidden true reward beside
the RM score, so a gain that is only reward hacking (RM up, true reward flat, gibberish) shows.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Any

import torch

from forgeline.jobs import data as datamod
from forgeline.jobs.reward import pad_right


class RewardScorer:
    __name__ = "reward_model"  # trl names reward functions after __name__ in its logs

    def __init__(self, model: torch.nn.Module, tokenizer: Any, device: torch.device, batch: int = 64) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.batch = batch
        self.max_len = int(getattr(model.config, "max_position_embeddings", 512))

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        eos = self.tokenizer.eos_token
        texts = [p + c + eos for p, c in zip(prompts, completions, strict=True)]
        out: list[float] = []
        for i in range(0, len(texts), self.batch):
            ids = self.tokenizer(texts[i : i + self.batch], add_special_tokens=False)["input_ids"]
            ids = [x[-self.max_len :] for x in ids]
            batch = pad_right(ids, self.tokenizer.pad_token_id, self.device)
            out.extend(self.model(**batch).logits[:, 0].float().tolist())
        return out

    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return self.score(prompts, completions)


@dataclass
class PolicyEval:
    rm_scores: list[float]
    true_rewards: list[float]
    word_shares: list[float]

    @staticmethod
    def mean_se(values: list[float]) -> tuple[float, float]:
        n = len(values)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / max(1, n - 1)
        return mean, math.sqrt(var / n)

    def summary(self, prefix: str) -> dict[str, float]:
        rm, rm_se = self.mean_se(self.rm_scores)
        true, true_se = self.mean_se(self.true_rewards)
        return {
            f"{prefix}_reward": rm,
            f"{prefix}_reward_se": rm_se,
            f"{prefix}_true_reward": true,
            f"{prefix}_true_reward_se": true_se,
            f"{prefix}_real_word_share": sum(self.word_shares) / len(self.word_shares),
            f"{prefix}_samples": float(len(self.rm_scores)),
        }


@torch.no_grad()
def sample_completions(
    policy: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    samples: int,
    max_new_tokens: int,
    seed: int,
    device: torch.device,
) -> tuple[list[str], list[str]]:
    """`samples` completions per prompt at temperature 1, from a fixed seed."""
    policy.eval()
    expanded = [p for p in prompts for _ in range(samples)]
    if not expanded:
        return [], []
    tokenizer.padding_side = "left"
    enc = tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    out = typing.cast(Any, policy).generate(
        **enc,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.set_rng_state(generator_state)
    completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return expanded, completions


def evaluate_policy(
    policy: torch.nn.Module,
    tokenizer: Any,
    scorer: RewardScorer,
    prompts: list[str],
    samples: int,
    max_new_tokens: int,
    seed: int,
    device: torch.device,
) -> PolicyEval:
    expanded, completions = sample_completions(policy, tokenizer, prompts, samples, max_new_tokens, seed, device)
    return PolicyEval(
        scorer.score(expanded, completions),
        [datamod.true_reward(c) for c in completions],
        [datamod.real_word_share(c) for c in completions],
    )
