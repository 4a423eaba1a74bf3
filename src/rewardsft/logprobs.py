"""Per-token and per-sequence log-probabilities: the one implementation every recipe and evaluation uses.

Shapes: ``logits`` (B, T, V), ``labels`` (B, T) with ``IGNORE_INDEX`` (-100) on positions that do not count
(prompt, padding). Token ``t`` is predicted from the logits at ``t - 1``, so per-token outputs are (B, T-1),
aligned with ``labels[:, 1:]``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from rewardsft.data.collate import block_visibility, collate, collate_shared
from rewardsft.data.tokenize import IGNORE_INDEX, TokenizedExample
from rewardsft.errors import ConfigError
from rewardsft.models import block_attention_mask, block_mask_refusal, eval_mode, hf_config

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


def branch_token_logps(
    logits: torch.Tensor, source: torch.Tensor, labels: torch.Tensor, row_of: torch.Tensor | None = None
) -> TokenLogps:
    """Log-probabilities of the K responses of each group of a :func:`rewardsft.data.collate.collate_branches`
    batch (``source``/``labels`` (G, K, L), group g in row ``row_of[g]`` of ``logits``; default: row g) as
    (G·K, L), response k of group g at g·K + k. Only the positions that predict a token are gathered."""
    groups, k, width = labels.shape
    device = logits.device
    rows = row_of.to(device) if row_of is not None else torch.arange(groups, device=device)
    mask = (labels != IGNORE_INDEX).to(device).reshape(-1)
    index = (rows[:, None, None] * logits.shape[1] + source.to(device)).reshape(-1)[mask]
    # Only the positions that predict a real token are upcast (responses shorter than the longest are not).
    picked_rows = logits.reshape(-1, logits.shape[-1]).index_select(0, index).float()
    target = labels.to(device).reshape(-1)[mask]
    picked = picked_rows.gather(-1, target.unsqueeze(-1)).squeeze(-1) - picked_rows.logsumexp(dim=-1)
    logps = torch.zeros(groups * k * width, device=device, dtype=picked.dtype).masked_scatter(mask, picked)
    return TokenLogps(logps.reshape(groups * k, width), mask.reshape(groups * k, width))


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


BLOCK_MASK_KEYS = ("input_ids", "position_ids", "document", "branch")
"""The fields of a shared-prefix or packed batch that :func:`block_mask_logits` takes, in order."""


def block_mask_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    document: torch.Tensor,
    branch: torch.Tensor,
) -> torch.Tensor:
    """Logits of rows laid out with their own attention pattern and positions (shared prefixes, packed
    examples): the (B, T) ``document``/``branch`` labels of :func:`block_visibility` become the (B, T, T) mask
    on the model's device. The model must take it (:func:`check_block_mask`)."""
    mask = block_attention_mask(model, block_visibility(document, branch))
    return model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits


PROBE_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-3}
"""Largest per-token log-prob difference the probe accepts (half precision: 0.05)."""


@torch.no_grad()
def block_mask_probe(model: torch.nn.Module) -> float:
    """Largest per-token |log-prob| difference between a synthetic [prompt | first | second] row and the two
    sequences run on their own: ~0 when the model applies the mask and positions as given, large when it builds
    positions or biases from its own mask (ALiBi models) or drops the mask. Every process runs the same forwards
    (a sharded model's forward is collective)."""
    config = hf_config(model)
    vocab = (config.get_text_config() if hasattr(config, "get_text_config") else config).vocab_size
    ids = (torch.randint(1, vocab, (15,), generator=torch.Generator().manual_seed(0))).tolist()
    prompt, first, second = ids[:6], ids[6:11], ids[11:]
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate_shared([(prompt, first, second)], 0).items()}
    with eval_mode(model):
        logits = block_mask_logits(model, *(batch[k] for k in BLOCK_MASK_KEYS))
        diffs = []
        for key, response in (("first", first), ("second", second)):
            shared = indexed_token_logps(logits, batch[f"{key}_source"], batch[f"{key}_labels"]).logps
            alone = collate([TokenizedExample(prompt, response)], 0)
            separate = model_token_logps(model, **{k: v.to(device) for k, v in alone.items()})
            diffs.append(float((shared.sum() - separate.logps.sum()).abs()) / len(response))
    return max(diffs)


def block_mask_problem(model: torch.nn.Module) -> str | None:
    """Why ``model`` would not apply a 4-D mask and positions as given (by what its config says, then by
    :func:`block_mask_probe`), or None when it does."""
    refusal = block_mask_refusal(model)
    if refusal is not None:
        return refusal
    gap = block_mask_probe(model)
    if gap > PROBE_TOLERANCE.get(next(model.parameters()).dtype, 0.05):
        return (
            f"needs a model that applies a custom attention mask and positions as given (a probe row differs from "
            f"its separate sequences by {gap:.3g} nats per token)"
        )
    return None


def dense_mask_warning(device: torch.device, setting: str) -> str | None:
    """On a GPU, why ``setting`` (shared or packed rows) may not pay: its block mask goes to sdpa as a dense 4-D
    mask, whose masked kernels compute every position pair (FlexAttention's block mask or varlen flash attention,
    which skip the masked blocks, are not wired); measured faster only on CPU (docs/performance.md)."""
    if device.type != "cuda":
        return None
    return (
        f"warning: {setting} on a GPU runs its block mask through sdpa's dense masked kernels (FlexAttention and "
        "varlen kernels are not wired); it was measured faster on CPU only: compare a few steps against the "
        "one-row-per-sequence mode before a long run"
    )


def check_block_mask(model: torch.nn.Module, setting: str, instead: str) -> None:
    """Refuse ``setting``, which needs a 4-D mask, for a model with a :func:`block_mask_problem`."""
    problem = block_mask_problem(model)
    if problem is not None:
        raise ConfigError(f"{setting} {problem}: {instead}")
