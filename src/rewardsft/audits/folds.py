"""The audit's pure parts: fold assignment, per-fold standardisation, flagging, and precision/recall."""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections.abc import Sequence


def assign_folds(keys: Sequence[str], folds: int, seed: int) -> list[int]:
    """A fold per row, identical rows (same key) always in one fold: a seeded shuffle of the distinct keys, each
    dealt to the fold with the fewest rows so far (a duplicate seen as a positive would rate its twin high)."""
    if folds < 2:
        raise ValueError(
            f"{folds} folds: the audit needs at least 2 (each row is scored by a reward learned without it)"
        )
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    if len(groups) < folds:
        raise ValueError(f"{len(groups)} distinct rows cannot fill {folds} folds; use fewer folds")
    order = list(groups)
    random.Random(seed).shuffle(order)
    sizes, fold_of = [0] * folds, [0] * len(keys)
    for key in order:
        fold = min(range(folds), key=lambda f: (sizes[f], f))
        for index in groups[key]:
            fold_of[index] = fold
        sizes[fold] += len(groups[key])
    return fold_of


def standardise_within(values: Sequence[float], fold_of: Sequence[int]) -> list[float]:
    """Each value as a z-score among its own fold's values: every fold has its own reward model, whose scale is
    its own, and the folds are random draws of the same rows, so their spreads should match. A value that is not
    finite (a row the model could not score: no room for its response) becomes -inf, the lowest rank, so that it
    is flagged for a look rather than hidden."""
    out = [-math.inf] * len(values)
    for fold in set(fold_of):
        members = [i for i, f in enumerate(fold_of) if f == fold and math.isfinite(values[i])]
        if not members:
            continue
        mean = statistics.fmean(values[i] for i in members)
        sd = statistics.pstdev([values[i] for i in members]) if len(members) > 1 else 0.0
        for i in members:
            out[i] = (values[i] - mean) / sd if sd > 0 else 0.0
    return out


def percentiles(scores: Sequence[float]) -> list[float]:
    """Share of the rows scoring strictly below each row, plus half the ties (0 = lowest, 1 = highest)."""
    n = len(scores)
    ordered = sorted(scores)
    out = []
    for s in scores:
        below = _count_below(ordered, s)
        ties = _count_below(ordered, s, strict=False) - below
        out.append((below + 0.5 * (ties - 1)) / max(n - 1, 1))
    return out


def _count_below(ordered: Sequence[float], value: float, strict: bool = True) -> int:
    return bisect.bisect_left(ordered, value) if strict else bisect.bisect_right(ordered, value)


def flag(scores: Sequence[float], share: float | None = None, below: float | None = None) -> list[bool]:
    """The rows to flag: the lowest ``share`` of them (ties at the cut broken by row order), or those scoring
    below ``below``; exactly one of the two."""
    if (share is None) == (below is None):
        raise ValueError("flag by a share of the rows or by a score, not both")
    if below is not None:
        return [s < below for s in scores]
    assert share is not None
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"flag share {share}: a share is between 0 and 1")
    count = round(share * len(scores))
    lowest = sorted(range(len(scores)), key=lambda i: (scores[i], i))[:count]
    flagged = [False] * len(scores)
    for i in lowest:
        flagged[i] = True
    return flagged


def precision_recall(flagged: Sequence[bool], bad: Sequence[bool]) -> tuple[float, float]:
    """Share of flagged rows that are bad, and share of bad rows flagged (nan where undefined)."""
    hits = sum(f and b for f, b in zip(flagged, bad, strict=True))
    n_flagged, n_bad = sum(flagged), sum(bad)
    return (hits / n_flagged if n_flagged else float("nan"), hits / n_bad if n_bad else float("nan"))
