"""Eval stage: compare language models on held-out data, judged by a reward model.

Every model samples K = max(bestOfN) completions for each held-out prompt, with the same
settings and seeds; the reward model (the judge) scores them; forgeline.jobs.evalstats turns the
scores into per-model statistics with standard errors (the prompt is the unit). Beside the judge's
view: held-out loss and perplexity on text, the judge's own accuracy on held-out preference pairs,
and on the synthetic task the hidden true reward, so reward hacking (RM score up, true reward
flat) shows in the same table.

Distribution and determinism: prompts go out in fixed chunks of CHUNK, round-robin over ranks,
and model m's chunk i is sampled from a seed derived from (generation.seed, m, i) whatever rank
runs it; so the results depend on the seed, not on the world size. The seed differs per model:
with one shared stream, two models' i-th completions would be coupled and a win rate would no
longer compare independent draws. Every rank holds one model at a time.

Output: results.json (everything, with the config and the inputs' manifest digests) as the
committed artifact; a compact table in the result metrics (status.output.metrics: the key names
are forgeline.api.gate.metric_key's, which quality gates read); gauges for the PodMonitor.
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from pathlib import Path
from typing import Any

import torch

from forgeline.api.gate import metric_key
from forgeline.jobs import data as datamod
from forgeline.jobs import evalstats, modeling
from forgeline.jobs.contract import ArtifactRef, ConfigError, EvalSettings
from forgeline.jobs.loop import token_nll
from forgeline.jobs.reward import load_reward_model, pad_right
from forgeline.jobs.runtime import Runtime, exit_process, stage_main
from forgeline.jobs.scoring import RewardScorer
from forgeline.jobs.storage import fresh_dir

CHUNK = 8  # prompts per generation batch (and per seed)
MAX_METRICS = 32  # status.output.metrics holds at most this many entries
# The compact table's columns, most important first: what fits in MAX_METRICS is kept.
METRIC_PRIORITY = ("winRate", "rating", "rmScore", "trueReward", "heldOutLoss")
BOOTSTRAP = 200


class EvalData(typing.NamedTuple):
    prompts: list[str]
    texts: list[str]
    pairs: list[tuple[str, str, str]]  # prompt, chosen, rejected


def held_out(rt: Runtime) -> EvalData:
    """The held-out records (the share the training stages never saw), at most eval.prompts of each."""
    cfg = rt.cfg
    assert cfg.eval is not None
    d, limit = cfg.data, cfg.eval.prompts
    if d.synthetic is not None:
        s = d.synthetic
        records = [
            r
            for kind in ("prompts", "corpus", "preferences")
            for r in datamod.synthetic_records(kind, s.examples, s.seed)
        ]
    else:
        records = datamod.load_records(d, rt.storage)
    held = datamod.split(records, d)[1]

    def text(rec: dict[str, Any], name: str) -> str | None:
        value = rec.get(name)
        return value if isinstance(value, str) and value else None

    prompts = [p for r in held if (p := text(r, d.prompt_field)) and text(r, d.chosen_field) is None]
    texts = [t for r in held if (t := text(r, d.text_field))]
    pairs = [
        (p, c, j)
        for r in held
        if (p := text(r, d.prompt_field)) and (c := text(r, d.chosen_field)) and (j := text(r, d.rejected_field))
    ]
    if not prompts:  # preference records only: their prompts serve
        prompts = [p for p, _, _ in pairs]
    if not prompts:
        raise ConfigError(
            "data.prompt_field",
            f"no held-out record of {d.uri} has a {d.prompt_field!r} field (a share evalFraction "
            f"{d.eval_fraction} of the records is held out); add prompts or raise data.evalFraction",
        )
    return EvalData(prompts[:limit], texts[:limit], pairs[:limit])


def digest_of(obj: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def chunk_seed(seed: int, model: str, chunk: int) -> int:
    """The sampling seed of one model's chunk: stable across runs, world sizes and Python versions."""
    return int(hashlib.sha256(f"{seed}/{model}/{chunk}".encode()).hexdigest()[:15], 16)


def my_chunks(rt: Runtime, n: int) -> list[int]:
    return list(range(rt.rank, math.ceil(n / CHUNK), rt.world))


@torch.no_grad()
def sample(
    policy: Any, tokenizer: Any, prompts: list[str], e: EvalSettings, seed: int, device: torch.device
) -> list[list[str]]:
    """K = max(best_of_n) completions per prompt, from `seed`; the global RNG is left as it was."""
    k = max(e.best_of_n)
    expanded = [p for p in prompts for _ in range(k)]
    tokenizer.padding_side = "left"
    enc = tokenizer(expanded, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    out = policy.generate(
        **enc,
        do_sample=True,
        temperature=e.temperature,
        top_k=0,
        top_p=e.top_p,
        max_new_tokens=e.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.set_rng_state(state)
    flat = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]


@torch.no_grad()
def text_losses(model: Any, tokenizer: Any, texts: list[str], device: torch.device, batch: int = 16) -> list[float]:
    """Mean next-token loss of each text (nats per token)."""
    limit = modeling.context_length(model)
    out: list[float] = []
    for i in range(0, len(texts), batch):
        ids = [x[:limit] for x in tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"]]
        enc = pad_right(ids, tokenizer.pad_token_id, device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        nll, count = token_nll(model(**enc).logits, labels)
        out.extend((nll / count.clamp(min=1)).tolist())
    return out


def evaluate_model(
    rt: Runtime, name: str, uri: str, digest: str | None, data: EvalData, judge: RewardScorer | None
) -> dict[str, Any]:
    """This rank's share for one model: completions (and their scores) by chunk, and text losses."""
    cfg = rt.cfg
    assert cfg.eval is not None
    path = rt.fetch_input(f"models.{name}", ArtifactRef(uri, digest))
    tokenizer = modeling.load_tokenizer(path, uri)
    model = modeling.load_causal_lm(path, uri, tokenizer.pad_token_id).to(rt.device).eval()
    chunks: dict[int, dict[str, Any]] = {}
    for c in my_chunks(rt, len(data.prompts)):
        prompts = data.prompts[c * CHUNK : (c + 1) * CHUNK]
        completions = sample(model, tokenizer, prompts, cfg.eval, chunk_seed(cfg.eval.seed, name, c), rt.device)
        scores = None
        if judge is not None:
            flat = judge.score(
                [p for p, cs in zip(prompts, completions, strict=True) for _ in cs],
                [text for cs in completions for text in cs],
            )
            k = len(completions[0])
            scores = [flat[i * k : (i + 1) * k] for i in range(len(prompts))]
        chunks[c] = {"completions": completions, "scores": scores}
    mine = data.texts[rt.rank :: rt.world]
    losses = text_losses(model, tokenizer, mine, rt.device) if mine else []
    del model
    return {"chunks": chunks, "losses": losses}


def gather_model(rt: Runtime, part: dict[str, Any]) -> tuple[list[list[str]], list[list[float]] | None, list[float]]:
    """Every rank's share, back in prompt order."""
    parts = rt.all_gather(part)
    chunks = {c: v for p in parts for c, v in p["chunks"].items()}
    completions = [x for c in sorted(chunks) for x in chunks[c]["completions"]]
    scored = all(chunks[c]["scores"] is not None for c in chunks)
    scores = [x for c in sorted(chunks) for x in chunks[c]["scores"]] if scored else None
    return completions, scores, [x for p in parts for x in p["losses"]]


def judge_accuracy(rt: Runtime, judge: RewardScorer, pairs: list[tuple[str, str, str]]) -> evalstats.Estimate | None:
    mine = pairs[rt.rank :: rt.world]
    chosen = judge.score([p for p, _, _ in mine], [c for _, c, _ in mine]) if mine else []
    rejected = judge.score([p for p, _, _ in mine], [r for _, _, r in mine]) if mine else []
    parts = rt.all_gather((chosen, rejected))
    all_c = [x for c, _ in parts for x in c]
    all_r = [x for _, r in parts for x in r]
    return evalstats.preference_accuracy(all_c, all_r) if all_c else None


def compact_metrics(models: dict[str, dict[str, Any]], extra: dict[str, float]) -> dict[str, float]:
    """The small table for status.output.metrics: per model, the columns of METRIC_PRIORITY that fit."""
    out = dict(extra)
    for column in METRIC_PRIORITY:
        for name, result in models.items():
            if column in result and len(out) < MAX_METRICS:
                out[metric_key(column, name)] = float(result[column]["mean"])
    return out


def train(rt: Runtime) -> tuple[Path, dict[str, Any]]:
    cfg = rt.cfg
    e = cfg.eval
    assert e is not None
    data = held_out(rt)
    synthetic = cfg.data.synthetic is not None
    judge = None
    if e.reward_model is not None:
        rm_dir = rt.fetch_input("judge", e.reward_model)
        rm_tokenizer = modeling.load_tokenizer(rm_dir, e.reward_model.uri)
        judge = RewardScorer(
            load_reward_model(rm_dir, e.reward_model.uri, rm_tokenizer.pad_token_id), rm_tokenizer, rt.device
        )
    total = len(e.models)
    rt.metrics.total_steps.labels(cfg.stage).set(total)
    rt.emit("progress", stage=cfg.stage, step=0, total=total, loss=None, tokens_per_s=None, metrics={})
    models: dict[str, dict[str, Any]] = {}
    scores: dict[str, list[list[float]]] = {}
    samples: dict[str, list[str]] = {}
    for i, m in enumerate(e.models, start=1):
        completions, rm_scores, losses = gather_model(rt, evaluate_model(rt, m.name, m.uri, m.digest, data, judge))
        result: dict[str, Any] = {}
        if losses:
            loss = evalstats.mean_se(losses)
            result["heldOutLoss"] = loss.as_dict()
            result["perplexity"] = evalstats.perplexity(loss).as_dict()
        if synthetic:
            per_prompt = [sum(map(datamod.true_reward, cs)) / len(cs) for cs in completions]
            result["trueReward"] = evalstats.mean_se(per_prompt).as_dict()
        if rm_scores is not None:
            scores[m.name] = rm_scores
        models[m.name] = result
        samples[m.name] = [cs[0] for cs in completions[:3]]
        rt.metrics.step.labels(cfg.stage).set(i)
        rt.emit(
            "progress",
            stage=cfg.stage,
            step=i,
            total=total,
            loss=None,  # steps are models here, not training: no loss curve
            tokens_per_s=None,
            metrics={f"{k}.{m.name}": v["mean"] for k, v in result.items()},
        )
    # steps: the models evaluated, as the progress events count them (a finished job shows n/n).
    extra: dict[str, float] = {"prompts": float(len(data.prompts)), "steps": float(total)}
    judged: dict[str, Any] = {}
    if judge is not None:
        table = evalstats.compare(scores, e.baseline, e.best_of_n, seed=e.seed, bootstrap=BOOTSTRAP)
        for name, stats in table.items():
            models[name].update(stats)
        accuracy = judge_accuracy(rt, judge, data.pairs)
        if accuracy is not None:
            judged["preferenceAccuracy"] = accuracy.as_dict()
            extra["preferenceAccuracy"] = accuracy.mean
    rt.metrics.on_eval_result(models)
    results = {
        "config": {
            "baseline": e.baseline,
            "models": [m.name for m in e.models],  # the spec's order (the JSON objects are sorted)
            "bestOfN": e.best_of_n,
            "samplesPerPrompt": max(e.best_of_n),
            "generation": {
                "maxNewTokens": e.max_new_tokens,
                "temperature": e.temperature,
                "topP": e.top_p,
                "seed": e.seed,
            },
            "bootstrap": BOOTSTRAP,
        },
        "inputs": dict(rt.inputs),
        "data": {
            "source": cfg.data.uri or "synthetic",
            "prompts": len(data.prompts),
            "texts": len(data.texts),
            "pairs": len(data.pairs),
            "digest": digest_of([data.prompts, data.texts, data.pairs]),
        },
        "judge": judged,
        "models": models,
        "samples": {
            name: [{"prompt": p, "completion": c} for p, c in zip(data.prompts, s, strict=False)]
            for name, s in samples.items()
        },
    }
    out = rt.scratch / "output"
    if rt.is_main:
        fresh_dir(out)
        (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    rt.barrier()
    return out, compact_metrics(models, extra)


def main(argv: list[str] | None = None) -> int:
    return stage_main("eval", train, argv)


if __name__ == "__main__":
    exit_process(main())
