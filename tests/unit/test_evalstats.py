"""The EvalJob's statistics on inputs whose answers are known by hand or in closed form."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from forgeline.jobs import evalstats as st


def test_mean_se_matches_hand_computation() -> None:
    e = st.mean_se([1.0, 2.0, 3.0, 4.0])
    # var (n-1) = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; se = sqrt(5/3 / 4)
    assert e.mean == 2.5
    assert e.se == pytest.approx(math.sqrt(5 / 12))
    assert e.n == 4


def test_single_value_has_zero_se_and_empty_input_is_an_error() -> None:
    assert st.mean_se([7.0]) == st.Estimate(7.0, 0.0, 1)
    with pytest.raises(ValueError, match="at least one"):
        st.mean_se([])


def test_perplexity_is_exp_of_loss_with_delta_method_se() -> None:
    p = st.perplexity(st.Estimate(math.log(10.0), 0.1, 50))
    assert p.mean == pytest.approx(10.0)
    assert p.se == pytest.approx(1.0)


def test_win_rate_counts_ties_half_and_takes_se_over_prompts() -> None:
    model = [[3.0, 1.0], [2.0, 2.0], [0.0, 0.0]]
    base = [[2.0, 2.0], [2.0, 1.0], [5.0, 5.0]]
    # prompt 0: 3>2, 3>2, 1<2, 1<2 -> 2/4; prompt 1: tie, win, tie, win -> 3/4; prompt 2: 0/4
    e = st.win_rate(model, base)
    per_prompt = [0.5, 0.75, 0.0]
    mean = sum(per_prompt) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in per_prompt) / 2 / 3)
    assert e.mean == pytest.approx(mean)
    assert e.se == pytest.approx(se)


def test_a_model_against_itself_wins_exactly_half() -> None:
    scores = [[random.Random(p).random() for _ in range(4)] for p in range(10)]
    assert st.win_rate(scores, scores).mean == pytest.approx(0.5)


def test_win_rate_rejects_different_prompt_counts() -> None:
    with pytest.raises(ValueError, match="different prompt counts"):
        st.win_rate([[1.0]], [[1.0], [2.0]])


def test_preference_accuracy_counts_ties_half() -> None:
    e = st.preference_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 1.0, 1.0])
    assert e.mean == pytest.approx((1 + 0.5 + 1 + 0) / 4)


def test_bradley_terry_recovers_known_strengths_from_expected_wins() -> None:
    truth = [1.0, 2.0, 4.0, 0.5]
    n = 100.0
    wins = [[n * a / (a + b) if i != j else 0.0 for j, b in enumerate(truth)] for i, a in enumerate(truth)]
    fitted = st.bradley_terry(wins)
    ratios = [f / fitted[0] for f in fitted]
    assert ratios == pytest.approx([t / truth[0] for t in truth], rel=1e-6)
    # Elo: a model twice as strong as the baseline is 400 log10(2) points above it
    assert st.elo(fitted, baseline=0)[1] == pytest.approx(1000 + 400 * math.log10(2), abs=1e-4)


def test_bradley_terry_without_prior_refuses_a_model_that_never_wins() -> None:
    with pytest.raises(ValueError, match="never wins"):
        st.bradley_terry([[0.0, 5.0], [0.0, 0.0]])
    finite = st.bradley_terry([[0.0, 5.0], [0.0, 0.0]], prior=0.5)
    assert finite[0] > finite[1] > 0


def test_ratings_anchor_the_baseline_at_1000_and_order_models_by_strength() -> None:
    rng = random.Random(0)
    # three models whose scores are shifted normals: each shift makes the model stronger
    scores = [[[rng.gauss(shift, 1.0) for _ in range(4)] for _ in range(200)] for shift in (0.0, 0.5, 1.0)]
    r = st.ratings(scores, baseline=0, bootstrap=50, seed=1)
    assert r.rating[0] == pytest.approx(1000.0)
    assert r.rating[0] < r.rating[1] < r.rating[2]
    assert r.se[0] == pytest.approx(0.0, abs=1e-9)  # the anchor does not move
    assert all(0 < s < 60 for s in r.se[1:])
    assert st.ratings(scores, baseline=0, bootstrap=50, seed=1) == r  # fixed seed, same table


def test_best_of_n_prompt_equals_the_mean_max_over_all_subsets() -> None:
    scores = [0.3, -1.0, 2.5, 0.7, 1.1]
    for n in range(1, 6):
        subsets = list(itertools.combinations(scores, n))
        expected = sum(max(s) for s in subsets) / len(subsets)
        assert st.best_of_n_prompt(scores, n) == pytest.approx(expected)
    assert st.best_of_n_prompt(scores, 1) == pytest.approx(sum(scores) / 5)
    with pytest.raises(ValueError, match="at least 6 samples"):
        st.best_of_n_prompt(scores, 6)


def test_best_of_n_on_uniform_scores_matches_n_over_n_plus_one() -> None:
    rng = random.Random(3)
    scores = [[rng.random() for _ in range(8)] for _ in range(4000)]
    for n in (1, 2, 4, 8):
        e = st.best_of_n(scores, n)
        assert abs(e.mean - n / (n + 1)) < 4 * e.se  # unbiased: within a few standard errors of the truth
        assert e.se < 0.01


def test_compare_reports_every_statistic_for_every_model() -> None:
    rng = random.Random(5)
    scores = {
        "base": [[rng.gauss(0.0, 1.0) for _ in range(4)] for _ in range(50)],
        "aligned": [[rng.gauss(1.0, 1.0) for _ in range(4)] for _ in range(50)],
    }
    table = st.compare(scores, "base", best_of=[1, 2, 4], bootstrap=20)
    assert table["base"]["winRate"] == {"mean": 0.5, "se": 0.0, "n": 50.0}
    aligned = table["aligned"]
    assert aligned["winRate"]["mean"] > 0.6  # type: ignore[index]
    best = aligned["bestOfN"]
    assert best["1"]["mean"] < best["2"]["mean"] < best["4"]["mean"]  # type: ignore[index]
    with pytest.raises(ValueError, match="baseline 'sft'"):
        st.compare(scores, "sft", best_of=[1])
