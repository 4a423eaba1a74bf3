"""Deterministic data order: which examples each optimiser step sees, reproducible on resume.

The order depends only on (seed, epoch), so a resumed run skips the steps it already took and sees
exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rewardsft.training.step import derive_seed


@dataclass(frozen=True)
class StepBatches:
    step: int
    """0-based optimiser step."""
    epoch: float
    """Fractional epoch at the end of this step."""
    micro_batches: list[list[int]]
    """This rank's example indices, one list per micro-batch of the accumulation."""


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int, world_size: int) -> int:
    micro = math.ceil(n_examples / (batch_size * world_size))
    return math.ceil(micro / grad_accum)


def total_steps(
    n_examples: int, batch_size: int, grad_accum: int, world_size: int, epochs: int, max_steps: int | None
) -> int:
    if max_steps is not None:
        return max_steps
    return epochs * steps_per_epoch(n_examples, batch_size, grad_accum, world_size)


def epoch_permutation(n_examples: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(derive_seed(seed, "data-order", epoch))
    return torch.randperm(n_examples, generator=generator).tolist()


def plan_steps(
    n_examples: int,
    *,
    batch_size: int,
    grad_accum: int,
    n_steps: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
) -> Iterator[StepBatches]:
    """Yield this rank's micro-batches for steps ``start_step .. n_steps - 1``, cycling epochs as needed.

    A global micro-batch holds ``batch_size * world_size`` examples; rank r takes every world_size-th one.
    The last micro-batch of an epoch may be short; it is topped up by wrapping around the epoch so every
    rank gets a non-empty share (processes must step together).
    """
    per_epoch = steps_per_epoch(n_examples, batch_size, grad_accum, world_size)
    global_micro = batch_size * world_size
    for step in range(start_step, n_steps):
        epoch, step_in_epoch = divmod(step, per_epoch)
        order = epoch_permutation(n_examples, seed, epoch)
        first = step_in_epoch * grad_accum * global_micro
        micro_batches = []
        for k in range(grad_accum):
            start = first + k * global_micro
            if start >= n_examples:
                break
            chunk = order[start : start + global_micro]
            if len(chunk) < world_size:
                chunk = chunk + order[: world_size - len(chunk)]
            micro_batches.append(chunk[rank::world_size])
        done = min(first + grad_accum * global_micro, n_examples)
        yield StepBatches(step, epoch + done / n_examples, micro_batches)
