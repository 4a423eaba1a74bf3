"""The real-data study's judges and statistics against hand-worked numbers and naive implementations."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
import torch
from benchmarks.study_judges import (
    _ranks,
    agreement,
    fit_ridge,
    ridge_predict,
    sample_health,
    win_rate,
    win_rate_ci,
)


def test_win_rate_counts_every_pair_and_ties_half() -> None:
    # A = [1, 3], B = [2, 3]: pairs (1,2) loss, (1,3) loss, (3,2) win, (3,3) tie -> (1 + 0.5) / 4
    assert win_rate([1, 3], [2, 3]) == pytest.approx(0.375)
    assert win_rate([5, 6], [1, 2]) == 1.0
    assert win_rate([1, 2], [1, 2]) == 0.5


def test_win_rate_matches_a_naive_double_loop() -> None:
    rng = random.Random(0)
    a = [rng.choice([0.0, 0.5, 1.0, 2.0]) for _ in range(13)]
    b = [rng.choice([0.0, 0.5, 1.0, 2.0]) for _ in range(9)]
    naive = statistics.fmean(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in itertools.product(a, b))
    assert win_rate(a, b) == pytest.approx(naive)


def test_win_rate_interval_brackets_the_point_and_separates_clear_differences() -> None:
    better = [float(i) for i in range(20, 40)]
    worse = [float(i) for i in range(0, 20)]
    point, (lo, hi) = win_rate_ci([(better, worse), (better, worse)], n_resamples=200)
    assert point == 1.0 and lo == hi == 1.0
    mixed = [float(i) for i in range(10, 30)]
    point, (lo, hi) = win_rate_ci([(mixed, worse)], n_resamples=200)
    assert lo <= point <= hi and 0.5 < lo < hi <= 1.0


def test_ridge_recovers_a_linear_rule_and_leaves_the_bias_unpenalised() -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 5, dtype=torch.float64)
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    y = x @ w + 7.0
    weights = fit_ridge(x, y, alpha=1e-6)
    assert torch.allclose(weights[:-1], w, atol=1e-4) and weights[-1].item() == pytest.approx(7.0, abs=1e-4)
    # Heavy penalty: weights shrink to 0 but the bias still fits the mean.
    shrunk = fit_ridge(x, y, alpha=1e9)
    assert shrunk[:-1].abs().max() < 1e-3 and shrunk[-1].item() == pytest.approx(float(y.mean()), abs=1e-2)
    assert torch.allclose(ridge_predict(weights, x), y, atol=1e-3)


def test_ranks_average_ties() -> None:
    assert _ranks([10.0, 30.0, 20.0, 20.0]) == [0.0, 3.0, 1.5, 1.5]


def test_agreement_by_hand() -> None:
    ratings = [3.0, 2.5, -2.5, -3.0, 0.0]
    perfect = agreement([3.0, 2.5, -2.5, -3.0, 0.0], ratings)
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["pair_accuracy"] == 1.0
    # Positives 1.0 and 0.0 vs negatives 0.5 and 0.5: wins (1.0 > 0.5) twice, losses (0.0 < 0.5) twice -> 0.5
    assert agreement([1.0, 0.0, 0.5, 0.5, 2.0], ratings)["pair_accuracy"] == 0.5


def test_sample_health_by_hand() -> None:
    samples = [
        {"text": " good day ", "tokens": 3, "stopped": True},
        {"text": "good day", "tokens": 3, "stopped": True},
        {"text": "", "tokens": 1, "stopped": True},
        {"text": "a b c", "tokens": 8, "stopped": False},
    ]
    health = sample_health(samples, {"good day"}, max_new_tokens=8)
    assert health["mean_tokens"] == pytest.approx(15 / 4)
    assert health["identical_to_demo"] == 0.5
    assert health["empty"] == 0.25 and health["truncated"] == 0.25
    # words: good day / good day / a b c -> 7 unigrams, 5 distinct; bigrams: (good day) x2, (a b), (b c) -> 3/4
    assert health["distinct_1"] == pytest.approx(5 / 7) and health["distinct_2"] == pytest.approx(3 / 4)


def test_a_constant_judge_has_no_correlation() -> None:
    result = agreement([0.0, 0.0, 0.0], [3.0, -3.0, 0.0])
    assert math.isnan(result["pearson"]) and math.isnan(result["spearman"]) and result["pair_accuracy"] == 0.5
