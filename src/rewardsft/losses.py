"""Losses as small pure functions over log-prob tensors (no model calls inside)."""

from __future__ import annotations

import torch

from rewardsft.logprobs import TokenLogps


def sft_nll(tokens: TokenLogps) -> torch.Tensor:
    """Mean negative log-likelihood per response token over the batch (scalar).

    Token-weighted, so long responses count in proportion to their length, as in standard SFT.
    """
    return -tokens.logps.sum() / tokens.mask.sum().clamp(min=1)
