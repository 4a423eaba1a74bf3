"""Pad tokenised examples into batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rewardsft.data.tokenize import IGNORE_INDEX, TokenizedExample


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response: ``input_ids``, ``attention_mask`` and ``labels`` (B, T).

    ``labels`` is ``IGNORE_INDEX`` on prompt and padding tokens, the token id on response tokens.
    """
    width = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation: ``input_ids`` and ``attention_mask`` (B, T)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids))
            attention_mask[row, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def batch_on(examples: Sequence[TokenizedExample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """:func:`collate` (right padding, labels masked) and move to ``device``."""
    return {key: value.to(device) for key, value in collate(examples, pad_id).items()}
