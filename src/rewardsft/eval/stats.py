"""Bootstrap confidence intervals (percentile method), seeded so reports are reproducible."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` over ``n_resamples`` resamples with replacement."""
    if not values:
        return (float("nan"), float("nan"))
    data = torch.tensor(list(values), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(data), (n_resamples, len(data)), generator=generator)
    means = data[picks].mean(dim=1).sort().values
    lo = means[int((1 - level) / 2 * (n_resamples - 1))]
    hi = means[int((1 + level) / 2 * (n_resamples - 1))]
    return float(lo), float(hi)
