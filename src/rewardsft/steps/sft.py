"""SFT's micro-step: the mean NLL over every response token of an optimiser step, padded or packed rows."""

from __future__ import annotations

from typing import Any

import torch

from rewardsft.data import TokenizedExample
from rewardsft.data.collate import batch_on, collate_packed
from rewardsft.logprobs import BLOCK_MASK_KEYS, TokenLogps, block_mask_logits, model_token_logps, token_logps
from rewardsft.losses import sft_nll
from rewardsft.training.engine import Engine


def accumulate_sft_step(
    engine: Engine,
    model: Any,
    micro_batches: list[list[TokenizedExample]],
    pad_id: int,
    packing_width: int | None = None,
) -> dict[str, float]:
    """Forward/backward every micro-batch of one optimiser step; returns ``train/loss`` and ``train/tokens``.

    The loss is the mean NLL over every response token of the step on every process, so the gradient does
    not depend on how the step is split into micro-batches or processes: each token's NLL is divided by the
    step's global token count (and multiplied by the process count, which DDP's gradient mean divides out).
    """
    local_tokens = sum(sum(len(ex.response_ids) for ex in examples) for examples in micro_batches)
    step_tokens = engine.reduce({"tokens": local_tokens}, reduction="sum")["tokens"]
    loss = 0.0
    for k, examples in enumerate(micro_batches):
        with engine.accumulate(model, last=k == len(micro_batches) - 1):
            tokens = micro_batch_logps(model, examples, pad_id, engine.device, packing_width)
            part = sft_nll(tokens, n_tokens=step_tokens)  # over the step's tokens on every process, not this batch's
            engine.backward(part * engine.world_size)  # DDP then averages: the sum over processes
        loss += float(part.detach())
    total = engine.reduce({"loss": loss}, reduction="sum")["loss"]
    return {"train/loss": total, "train/tokens": step_tokens}


def micro_batch_logps(
    model: Any, examples: list[TokenizedExample], pad_id: int, device: torch.device, packing_width: int | None = None
) -> TokenLogps:
    """The examples' per-token log-probs: one right-padded row each (:func:`collate`), or packed into rows of up to
    ``packing_width`` tokens (:func:`collate_packed`, ``train.packing``); the same tokens either way."""
    if packing_width is None:
        return model_token_logps(model, **batch_on(examples, pad_id, device))
    batch = {key: value.to(device) for key, value in collate_packed(examples, pad_id, packing_width).items()}
    logits = block_mask_logits(model, *(batch[k] for k in BLOCK_MASK_KEYS))
    return token_logps(logits, batch["labels"])
