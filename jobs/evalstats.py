"""The statistics an EvalJob reports, pure and exact: means with standard errors, win rates,
Bradley-Terry ratings, best-of-N curves.

The unit of independence is the prompt. Each model samples K completions per prompt and the
reward model scores them; every statistic is first reduced to one number per prompt (a mean, a
share of won pairs, an expected maximum) and the standard error is taken over prompts. That keeps
the K completions of one prompt, which are correlated, from pretending to be K independent
samples.

Bradley-Terry: P(i beats j) = s_i / (s_i + s_j), fitted with Hunter's MM iteration (2004) from
pairwise win counts (ties count half to each side), and reported on the Elo scale
`1000 + 400 log10(s_i / s_baseline)`. A small virtual tie between every pair (`prior`) keeps the
fit finite when one model wins every comparison. Standard errors come from a bootstrap over
prompts with a fixed seed, so the same samples always give the same table.

Best-of-N: the expected best RM score among N completions, estimated without bias from K >= N
samples per prompt by the order-statistics (U-statistic) estimator
`sum_i C(i-1, N-1) / C(K, N) * x_(i)` over the sorted scores: the mean of the maximum over every
N-subset of the K samples.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

BASE_RATING = 1000.0
ELO_SCALE = 400.0


@dataclass(frozen=True)
class Estimate:
    """A mean over independent units and its standard error (0 when there is one unit)."""

    mean: float
    se: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "se": self.se, "n": float(self.n)}


def mean_se(values: Sequence[float]) -> Estimate:
    """Sample mean and standard error `sd / sqrt(n)` (sd with n - 1)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_se needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(mean, 0.0, 1)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Estimate(mean, math.sqrt(var / n), n)


def perplexity(loss: Estimate) -> Estimate:
    """exp(mean loss), with the delta-method SE exp(m) * se."""
    ppl = math.exp(loss.mean)
    return Estimate(ppl, ppl * loss.se, loss.n)


def pair_outcome(a: Sequence[float], b: Sequence[float]) -> float:
    """Share of the len(a) x len(b) pairs that a wins; ties count half."""
    if not a or not b:
        raise ValueError("pair_outcome needs scores on both sides")
    won = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    return won / (len(a) * len(b))


def _same_prompts(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> None:
    if len(a) != len(b):
        raise ValueError(f"the two models were scored on different prompt counts ({len(a)} and {len(b)})")


def win_rate(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> Estimate:
    """How often model a's completions beat model b's on the same prompt, with SE over prompts.

    `a[p]` and `b[p]` are the RM scores of each model's completions for prompt p.
    """
    _same_prompts(a, b)
    return mean_se([pair_outcome(x, y) for x, y in zip(a, b, strict=True)])


def preference_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> Estimate:
    """Share of held-out pairs where the reward model scores chosen above rejected (ties half)."""
    if len(chosen) != len(rejected):
        raise ValueError("chosen and rejected scores differ in length")
    return mean_se([(c > r) + 0.5 * (c == r) for c, r in zip(chosen, rejected, strict=True)])


def best_of_n_prompt(scores: Sequence[float], n: int) -> float:
    """Unbiased estimate of E[max of n draws] from the K >= n sampled scores of one prompt."""
    k = len(scores)
    if not 1 <= n <= k:
        raise ValueError(f"best-of-{n} needs at least {n} samples per prompt, got {k}")
    ordered = sorted(scores)
    total = math.comb(k, n)
    return math.fsum(math.comb(i - 1, n - 1) * ordered[i - 1] for i in range(n, k + 1)) / total


def best_of_n(scores: Sequence[Sequence[float]], n: int) -> Estimate:
    """Best-of-n RM score: the per-prompt estimate averaged over prompts, with SE over prompts."""
    return mean_se([best_of_n_prompt(s, n) for s in scores])


# --- Bradley-Terry ---------------------------------------------------------------------------

Matrix = list[list[float]]


def _zeros(m: int) -> Matrix:
    return [[0.0] * m for _ in range(m)]


def prompt_win_matrices(scores: Sequence[Sequence[Sequence[float]]]) -> list[Matrix]:
    """For each prompt, w[i][j] = pairs of completions where model i beat model j (ties half).

    `scores[m][p]` are model m's completion scores on prompt p.
    """
    models = len(scores)
    prompts = len(scores[0]) if models else 0
    for s in scores:
        _same_prompts(scores[0], s)
    out = []
    for p in range(prompts):
        w = _zeros(models)
        for i in range(models):
            for j in range(i + 1, models):
                a, b = scores[i][p], scores[j][p]
                share = pair_outcome(a, b)
                w[i][j], w[j][i] = share, 1.0 - share
        out.append(w)
    return out


def bradley_terry(wins: Matrix, prior: float = 0.0, iterations: int = 10_000, tol: float = 1e-12) -> list[float]:
    """Strengths s (geometric mean 1) maximising the Bradley-Terry likelihood of `wins`.

    `wins[i][j]` is the (possibly fractional) number of times i beat j. `prior` adds that many
    virtual ties to every pair, which keeps strengths finite when a model never loses.
    """
    m = len(wins)
    w = [[wins[i][j] + (prior / 2 if i != j else 0.0) for j in range(m)] for i in range(m)]
    games = [[w[i][j] + w[j][i] for j in range(m)] for i in range(m)]
    won = [sum(row) for row in w]
    s = [1.0] * m
    for _ in range(iterations):
        new = []
        for i in range(m):
            denom = sum(games[i][j] / (s[i] + s[j]) for j in range(m) if j != i and games[i][j] > 0)
            new.append(won[i] / denom if denom > 0 else s[i])
        if any(x <= 0 for x in new):
            raise ValueError("a model never wins and prior is 0: its strength is 0 (use prior > 0)")
        log_mean = math.fsum(math.log(x) for x in new) / m
        new = [x / math.exp(log_mean) for x in new]
        done = max(abs(math.log(x / y)) for x, y in zip(new, s, strict=True)) < tol
        s = new
        if done:
            break
    return s


def elo(strengths: Sequence[float], baseline: int) -> list[float]:
    """Strengths on the Elo scale, the baseline at 1000."""
    return [BASE_RATING + ELO_SCALE * math.log10(x / strengths[baseline]) for x in strengths]


@dataclass(frozen=True)
class Ratings:
    rating: list[float]
    se: list[float]


def _sum_matrices(ms: Sequence[Matrix], size: int) -> Matrix:
    total = _zeros(size)
    for w in ms:
        for i in range(size):
            for j in range(size):
                total[i][j] += w[i][j]
    return total


def ratings(
    scores: Sequence[Sequence[Sequence[float]]],
    baseline: int,
    bootstrap: int = 200,
    seed: int = 0,
    prior: float = 0.5,
) -> Ratings:
    """Elo-scale Bradley-Terry ratings of all models from per-prompt pairwise comparisons.

    Each prompt contributes one comparison per pair of models (the share of completion pairs
    won), so prompts weigh equally. SEs: the standard deviation over `bootstrap` resamples of the
    prompts (fixed `seed`); 0 when bootstrap is 0.
    """
    per_prompt = prompt_win_matrices(scores)
    m = len(scores)
    point = elo(bradley_terry(_sum_matrices(per_prompt, m), prior), baseline)
    if bootstrap <= 0 or len(per_prompt) < 2:
        return Ratings(point, [0.0] * m)
    rng = random.Random(seed)
    draws: list[list[float]] = []
    for _ in range(bootstrap):
        sample = [per_prompt[rng.randrange(len(per_prompt))] for _ in per_prompt]
        draws.append(elo(bradley_terry(_sum_matrices(sample, m), prior), baseline))
    se = []
    for i in range(m):
        column = [d[i] for d in draws]
        mu = math.fsum(column) / len(column)
        se.append(math.sqrt(math.fsum((x - mu) ** 2 for x in column) / (len(column) - 1)))
    return Ratings(point, se)


def compare(
    rm_scores: Mapping[str, Sequence[Sequence[float]]],
    baseline: str,
    best_of: Sequence[int],
    seed: int = 0,
    bootstrap: int = 200,
) -> dict[str, dict[str, object]]:
    """The RM-judged comparison of every model: score, win rate vs the baseline, rating, best-of-N.

    `rm_scores[name][p]` are the RM scores of that model's completions on prompt p (same prompts
    for every model, in the same order).
    """
    names = list(rm_scores)
    if baseline not in rm_scores:
        raise ValueError(f"baseline {baseline!r} is not one of the models {names}")
    table = [rm_scores[n] for n in names]
    rated = ratings(table, names.index(baseline), bootstrap=bootstrap, seed=seed)
    out: dict[str, dict[str, object]] = {}
    for k, name in enumerate(names):
        per_prompt_means = [math.fsum(s) / len(s) for s in rm_scores[name]]
        out[name] = {
            "rmScore": mean_se(per_prompt_means).as_dict(),
            "winRate": win_rate(rm_scores[name], rm_scores[baseline]).as_dict(),
            "rating": {"mean": rated.rating[k], "se": rated.se[k]},
            "bestOfN": {str(n): best_of_n(rm_scores[name], n).as_dict() for n in best_of},
        }
    return out
