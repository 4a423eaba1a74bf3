"""Bootstrap confidence intervals (percentile method), seeded so reports are reproducible.

The one bootstrap of the package: every interval of a mean (a model's own gap or win rate, and the paired
difference of two models in ``eval/paired.py``) comes from :func:`bootstrap_ci`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def bootstrap_ci(
    values: Sequence[float] | torch.Tensor, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` over ``n_resamples`` resamples with replacement.

    The two order statistics are symmetric (the k-th from each end of the sorted resampled means), so negating
    the values negates the interval exactly: swapping two models swaps the ends of their paired interval. All
    values equal give a zero-width interval; no values give ``(nan, nan)``.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level {level}: a confidence level is between 0 and 1")
    if n_resamples < 1:
        raise ValueError(f"n_resamples {n_resamples}: at least one resample")
    data = torch.as_tensor(values if isinstance(values, torch.Tensor) else list(values), dtype=torch.float64)
    data = data.flatten()
    if data.numel() == 0:
        return (float("nan"), float("nan"))
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, data.numel(), (n_resamples, data.numel()), generator=generator)
    means = data[picks].mean(dim=1).sort().values
    # 1e-9: (1 - 0.95) / 2 * 2000 is 50.00000000000004 but another level may land a hair below its integer.
    k = int((1 - level) / 2 * n_resamples + 1e-9)
    return float(means[k]), float(means[n_resamples - 1 - k])
