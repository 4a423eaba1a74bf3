"""Losses as small pure functions over log-prob tensors (no model calls inside)."""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rewardsft.logprobs import TokenLogps


def sft_nll(tokens: TokenLogps, n_tokens: float | None = None) -> torch.Tensor:
    """Negative log-likelihood of the response tokens, summed and divided by ``n_tokens`` (scalar).

    ``n_tokens`` defaults to this batch's response tokens (the per-token mean). Token-weighted, so long
    responses count in proportion to their length, as in standard SFT; a step split into micro-batches or
    processes passes the whole step's token count so the split does not change the gradient.
    """
    denominator = tokens.mask.sum().clamp(min=1) if n_tokens is None else max(n_tokens, 1.0)
    return -tokens.logps.sum() / denominator


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
            return F.softplus(-margin)  # log(1 + e^-u) without overflow at large negative u
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
    # Positive when the policy raised the demonstration (relative to θ_t) more than its own sample: ℓ falls.
    margin = beta * (demo_ratio - gen_ratio)
    return IRFTTerms(
        loss=kind(margin),
        demo_reward=(beta * demo_ratio).detach(),
        gen_reward=(beta * gen_ratio).detach(),
        margin=margin.detach(),
    )


class BTTerms(NamedTuple):
    loss: torch.Tensor
    """(B,) −log σ(r(y_demo) − r(ỹ)) per pair."""
    accuracy: torch.Tensor
    """(B,) 1.0 where the demonstration scores above the generation."""
    margin: torch.Tensor
    """(B,) r(y_demo) − r(ỹ), detached."""


def reward_bt_loss(demo_scores: torch.Tensor, gen_scores: torch.Tensor) -> BTTerms:
    """Bradley–Terry loss with the demonstration preferred (Algorithm 1, reward step); scores (B,)."""
    margin = demo_scores - gen_scores  # the demonstration is the preferred side
    return BTTerms(F.softplus(-margin), (margin > 0).float().detach(), margin.detach())


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages for rewards (P, k) of k ≥ 2 samples per prompt.

    A_i = r_i − mean_{j≠i} r_j, which equals k/(k−1)·(r_i − mean_j r_j).
    """
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    others = (rewards.sum(dim=-1, keepdim=True) - rewards) / (k - 1)  # mean of the k−1 others: no self-bias
    return rewards - others


def sequence_kl(policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) KL estimate Σ_t [log π(y_t) − log π_ref(y_t)] over the sampled response tokens (the k1 estimator).

    Its expectation under y ~ π is KL(π || π_ref); summed per token it is the per-token KL penalty of RLHF.
    """
    return ((policy_token_logps - ref_token_logps) * mask).sum(dim=-1)


def kl_penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """r_φ(x, y) − β_KL·KL estimate, per sequence (B,)."""
    return scores - kl_coef * kl


def rloo_policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip: float = 0.2
) -> torch.Tensor:
    """Clipped policy-gradient loss on sequence log-probs (B,) (scalar).

    ratio = π_θ(y)/π_old(y); loss = −mean(min(ratio·A, clip(ratio, 1±ε)·A)). On the first step over a rollout
    ratio = 1 and this is REINFORCE with the leave-one-out baseline; later steps stay near the sampling policy.
    """
    # The sampler's log-probs and the advantages are constants of the rollout: only the ratio's numerator learns.
    ratio = torch.exp(logps - old_logps.detach())
    unclipped = ratio * advantages.detach()
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages.detach()
    return -torch.minimum(unclipped, clipped).mean()  # minus: the optimiser descends, the objective ascends


def normalise_rewards(
    rewards: torch.Tensor, mode: str, clip: float | None, moments: tuple[float, float] | None = None
) -> torch.Tensor:
    """``whiten``: zero mean, unit variance; then clip to ±``clip`` when set.

    ``moments`` (mean, std) of the whole round when it is spread over processes; default: this batch's own.
    """
    if mode == "whiten" and (moments is not None or rewards.numel() > 1):
        mean, std = moments if moments is not None else (float(rewards.mean()), float(rewards.std()))
        rewards = (rewards - mean) / (std + 1e-8)  # 1e-8: a round whose rewards are all equal gives zeros
    if clip is not None:
        rewards = rewards.clamp(-clip, clip)
    return rewards
