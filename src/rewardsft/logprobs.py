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


def indexed_token_logps(logits: torch.Tensor, source: torch.Tensor, labels: torch.Tensor) -> TokenLogps:
    """Log-probabilities of ``labels`` (B, L) under the logits at positions ``source`` (B, L) of each row: the
    reading of a row in which a token is not always predicted from the position before it (a shared prefix,
    :func:`rewardsft.data.collate.collate_shared`). Same contract as :func:`token_logps`: float32, 0 off the mask."""
    if source.shape != labels.shape or source.shape[0] != logits.shape[0]:
        raise ValueError(f"source {tuple(source.shape)}, labels {tuple(labels.shape)}, logits {tuple(logits.shape)}")
    # Only the L rows that predict a token are gathered (and upcast), not the whole (B, T, V) tensor.
    rows = logits.gather(1, source.unsqueeze(-1).expand(-1, -1, logits.shape[-1])).float()
    mask = labels != IGNORE_INDEX
    picked = rows.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return TokenLogps((picked - rows.logsumexp(dim=-1)).masked_fill(~mask, 0.0), mask)


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


def block_mask_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Logits of rows laid out with their own attention pattern (``visible`` (B, T, T) bool, from
    :func:`rewardsft.data.collate.block_visibility`) and positions: shared prefixes, packed examples. The model's
    attention must take a 4-D mask (:func:`rewardsft.models.check_block_mask`)."""
    config = getattr(model, "module", model).config
    mask = visible.unsqueeze(1)
    if getattr(config, "_attn_implementation", None) != "sdpa":  # sdpa takes a boolean mask in any dtype
        # eager adds the mask to the scores; float32 promotes a half-precision score without overflow
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
            ~mask, torch.finfo(torch.float32).min
        )
    return model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
