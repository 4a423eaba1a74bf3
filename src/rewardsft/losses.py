"""Losses as small pure functions over log-prob tensors (no model calls inside)."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rewardsft.logprobs import TokenLogps


def sft_nll(tokens: TokenLogps) -> torch.Tensor:
    """Mean negative log-likelihood per response token over the batch (scalar).

    Token-weighted, so long responses count in proportion to their length, as in standard SFT.
    """
    return -tokens.logps.sum() / tokens.mask.sum().clamp(min=1)


class IRFTLoss(StrEnum):
    """ℓ(u) applied to the implicit-reward margin u (PAPER.md, Algorithm 2)."""

    SIGMOID = "sigmoid"
    """log(1 + e^-u): the SPIN / DPO form (default)."""
    HINGE = "hinge"
    """max(0, 1 - u)."""
    LINEAR = "linear"
    """-u: the form the theory derives."""

    def __call__(self, margin: torch.Tensor) -> torch.Tensor:
        if self is IRFTLoss.SIGMOID:
            return F.softplus(-margin)
        if self is IRFTLoss.HINGE:
            return F.relu(1.0 - margin)
        return -margin


class IRFTTerms(NamedTuple):
    loss: torch.Tensor
    """(B,) per-pair loss ℓ(margin)."""
    demo_reward: torch.Tensor
    """(B,) β·(log π_θ(y|x) − log π_ref(y|x)), detached."""
    gen_reward: torch.Tensor
    """(B,) β·(log π_θ(ỹ|x) − log π_ref(ỹ|x)), detached."""
    margin: torch.Tensor
    """(B,) demo_reward − gen_reward, detached; accuracy is ``margin > 0``."""


def irft_loss(
    policy_demo_logps: torch.Tensor,
    policy_gen_logps: torch.Tensor,
    ref_demo_logps: torch.Tensor,
    ref_gen_logps: torch.Tensor,
    beta: float,
    kind: IRFTLoss = IRFTLoss.SIGMOID,
) -> IRFTTerms:
    """Contrastive IRFT loss on sequence log-probs (B,), summed over response tokens.

    u = β·[(log π_θ(y) − log π_θ(ỹ)) − (log π_ref(y) − log π_ref(ỹ))], loss = ℓ(u) per pair.
    """
    demo_ratio = policy_demo_logps - ref_demo_logps
    gen_ratio = policy_gen_logps - ref_gen_logps
    margin = beta * (demo_ratio - gen_ratio)
    return IRFTTerms(
        loss=kind(margin),
        demo_reward=(beta * demo_ratio).detach(),
        gen_reward=(beta * gen_ratio).detach(),
        margin=margin.detach(),
    )
