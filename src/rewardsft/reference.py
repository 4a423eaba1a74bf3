"""The frozen snapshot π_ref = θ_t of an IRFT stage, three ways that give the same log-probs.

- ``cached`` (default): θ_t is also the generator, so the snapshot's log-probs of every (demonstration,
  generation) pair of the stage are computed once at the stage start; training then holds one model (SFT
  memory). The cache is also what a resumed run uses for the rest of its stage, whatever the mode.
- ``copy``: a frozen deep copy of the policy, run on every batch (two models in memory).
- ``lora``: at the stage start the adapter is merged into the base weights and ``lora_B`` reset to zero,
  so the adapter-disabled model is θ_t while training continues on the adapter (no second model).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rewardsft.data import TokenizedExample
from rewardsft.data.collate import batch_on, collate_branches
from rewardsft.logprobs import (
    BLOCK_MASK_KEYS,
    TokenLogps,
    block_mask_logits,
    branch_token_logps,
    model_token_logps,
    sequence_logps,
)
from rewardsft.models import eval_mode
from rewardsft.sharding import lockstep


@dataclass(frozen=True)
class Pair:
    """A demonstration and the snapshot's generation for the same prompt."""

    demo: TokenizedExample
    gen: TokenizedExample


def pair_batch(pairs: Sequence[Pair], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One padded batch of 2B rows: demonstrations first, then generations (one forward for both)."""
    return batch_on([p.demo for p in pairs] + [p.gen for p in pairs], pad_id, device)


def split_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of a :func:`pair_batch`: (demo (B,), gen (B,))."""
    logps = sequence_logps(model_token_logps(model, **batch), "sum")
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def shared_pair_batch(
    pairs: Sequence[Pair], pad_id: int, device: torch.device, width: int | None = None
) -> dict[str, torch.Tensor]:
    """A row per pair, ``[prompt | demonstration | generation]`` (:func:`collate_branches`): the prompt is
    computed once for both responses; with ``width`` several pairs packed to a row of up to that many tokens
    (``train.packing``). The generation was sampled from the very prompt of its demonstration."""
    for p in pairs:
        if p.gen.prompt_ids != p.demo.prompt_ids:
            raise ValueError(f"pair {p.demo.index}: the generation's prompt differs from its demonstration's")
    groups = [(p.demo.prompt_ids, [p.demo.response_ids, p.gen.response_ids]) for p in pairs]
    return {key: value.to(device) for key, value in collate_branches(groups, pad_id, width).items()}


def pair_logps(
    model: Any, pairs: Sequence[Pair], pad_id: int, device: torch.device, shared: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs (demo (B,), gen (B,)) of ``pairs``: from a :func:`pair_batch` of 2B rows, or
    with ``shared`` from one row per pair (:func:`shared_pair_batch`, ``irft.pair_forward=shared``)."""
    if not shared:
        return split_logps(model, pair_batch(pairs, pad_id, device))
    demo, gen = shared_split_logps(model, shared_pair_batch(pairs, pad_id, device))
    return sequence_logps(demo, "sum"), sequence_logps(gen, "sum")


def shared_split_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[TokenLogps, TokenLogps]:
    """Per-token log-probs (demonstrations, generations) of a :func:`shared_pair_batch` from one forward."""
    logits = block_mask_logits(model, *(batch[k] for k in BLOCK_MASK_KEYS))
    both = branch_token_logps(logits, batch["source"], batch["labels"], batch["row_of"])  # pair g at 2g, 2g + 1
    return TokenLogps(both.logps[0::2], both.mask[0::2]), TokenLogps(both.logps[1::2], both.mask[1::2])


class Snapshot(Protocol):
    def logps(
        self, pair_ids: Sequence[int], pairs: Sequence[Pair], pad_id: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Snapshot log-probs (demo (B,), gen (B,)) of ``pairs``, which are the stage's pairs ``pair_ids``.

        The cached snapshot only looks the ids up; the others build and run the batch themselves.
        """
        ...


@torch.no_grad()
def compute_ref_logps(
    model: Any,
    pairs: Sequence[Pair],
    batch_size: int,
    pad_id: int,
    dummy: Sequence[Pair] | None = None,
    shared: bool = False,
) -> torch.Tensor:
    """(N, 2) snapshot log-probs [demo, gen] of every pair, with the model in eval mode.

    With a sharded model every process must call this the same number of times per batch count: a process with
    fewer batches (its share of a stage split unevenly) runs ``dummy`` ones, whose rows are dropped. Pass a pair of
    the whole stage as ``dummy`` when ``pairs`` is one process's share: a share can be empty."""
    device = next(model.parameters()).device
    chunks = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
    rows = []
    with eval_mode(model):
        for chunk, real in lockstep(chunks, model, dummy=list(pairs[:1] if dummy is None else dummy)):
            demo, gen = pair_logps(model, chunk, pad_id, device, shared)
            if real:
                rows.append(torch.stack([demo, gen], dim=-1).float().cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 2)


class CachedSnapshot:
    def __init__(self, cache: torch.Tensor):
        self.cache = cache

    def logps(
        self, pair_ids: Sequence[int], pairs: Sequence[Pair], pad_id: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.cache[list(pair_ids)].to(device)
        return rows[:, 0], rows[:, 1]


class CopySnapshot:
    def __init__(self, model: Any, shared: bool = False):
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.shared = shared

    @torch.no_grad()
    def logps(
        self, pair_ids: Sequence[int], pairs: Sequence[Pair], pad_id: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return pair_logps(self.model, pairs, pad_id, device, self.shared)


class LoraBaseSnapshot:
    """The adapter-disabled model; build it with :func:`merge_lora_into_base` at the stage start."""

    def __init__(self, model: Any, shared: bool = False):
        self.model = model
        self.shared = shared

    @torch.no_grad()
    def logps(
        self, pair_ids: Sequence[int], pairs: Sequence[Pair], pad_id: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with eval_mode(self.model), self.model.disable_adapter():
            return pair_logps(self.model, pairs, pad_id, device, self.shared)


@torch.no_grad()
def merge_lora_into_base(model: Any) -> int:
    """Fold every LoRA delta into its base weight and zero ``lora_B``; the policy itself is unchanged.

    Afterwards base == θ_t (the snapshot). ``lora_A`` and the optimiser state carry on. Returns the number
    of layers merged.
    """
    merged = 0
    for module in model.modules():
        if not (hasattr(module, "lora_B") and hasattr(module, "base_layer")):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_B:
                continue
            delta = module.get_delta_weight(adapter)
            module.base_layer.weight.data += delta.to(module.base_layer.weight.dtype)
            module.lora_B[adapter].weight.data.zero_()
            merged += 1
    return merged
