"""Per-token and per-sequence log-probabilities: the one implementation every recipe and evaluation uses.

Shapes: ``logits`` (B, T, V), ``labels`` (B, T) with ``IGNORE_INDEX`` (-100) on positions that do not count
(prompt, padding). Token ``t`` is predicted from the logits at ``t - 1``, so per-token outputs are (B, T-1),
aligned with ``labels[:, 1:]``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from rewardsft.data.tokenize import IGNORE_INDEX

Reduction = Literal["sum", "mean"]


class TokenLogps(NamedTuple):
    logps: torch.Tensor
    """(B, T-1) float32 log p(label_t | tokens before t); exactly 0 where ``mask`` is False."""
    mask: torch.Tensor
    """(B, T-1) bool, True on response tokens."""


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> TokenLogps:
    """Log-probabilities of ``labels`` under ``logits`` after the one-position shift, in float32."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)")
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    # gather - logsumexp avoids materialising a second (B, T, V) log-softmax tensor.
    picked = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    logps = (picked - logits.logsumexp(dim=-1)).masked_fill(~mask, 0.0)
    return TokenLogps(logps, mask)


def sequence_logps(tokens: TokenLogps, reduction: Reduction = "sum") -> torch.Tensor:
    """(B,) log p(response | prompt): the sum over response tokens, or their mean (0 for an empty row)."""
    total = tokens.logps.sum(dim=-1)
    if reduction == "sum":
        return total
    return total / tokens.mask.sum(dim=-1).clamp(min=1)


def model_token_logps(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> TokenLogps:
    """Run ``model`` (a causal LM) and return the per-token log-probs of ``labels``."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return token_logps(logits, labels)
