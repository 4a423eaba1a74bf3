"""IRFT's micro-step: the contrastive pair loss over (demonstration, generation) pairs and its three pair forwards
(split, joint, shared), each giving the same gradient."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rewardsft.config import IRFTConfig
from rewardsft.data.collate import batch_on
from rewardsft.logprobs import TokenLogps, block_mask_problem, model_token_logps, sequence_logps
from rewardsft.losses import IRFTLoss, IRFTTerms, irft_loss, sft_nll
from rewardsft.reference import Pair, Snapshot, pair_batch, shared_pair_batch, shared_split_logps
from rewardsft.training.engine import Engine


@dataclass(frozen=True)
class PairLossSpec:
    """What one IRFT micro-step needs to know about the objective."""

    beta: float
    loss: IRFTLoss
    sft_weight: float
    pair_forward: str
    """``split``, ``joint`` or ``shared`` (``auto`` already resolved)."""
    packing_width: int | None = None
    """``shared`` rows packed several pairs to a row of up to this many tokens (``train.packing``): twice
    ``data.max_length``, the longest a pair's row can be (prompt and two responses of up to that length each)."""

    @classmethod
    def from_config(cls, config: IRFTConfig, model: Any = None) -> PairLossSpec:
        ic = config.irft
        width = 2 * config.data.max_length if config.train.packing else None
        return cls(ic.beta, IRFTLoss(ic.loss), ic.sft_weight, pair_forward(config, model), width)


IRFT_METRICS = (
    "irft/loss",
    "irft/demo_reward",
    "irft/gen_reward",
    "irft/margin",
    "irft/accuracy",
    "logps/demo",
    "logps/gen",
)


@dataclass(frozen=True)
class StepSize:
    """What one optimiser step covers over every micro-batch and process: the loss is ℓ's mean over ``pairs`` plus
    ``sft_weight`` × the NLL's mean over the demonstrations' ``tokens``, so splitting a step into micro-batches or
    processes does not change its gradient. ``processes`` undoes DDP's mean over processes."""

    pairs: float
    tokens: float
    processes: int


@dataclass(frozen=True)
class PairStep:
    """What every micro-batch of one optimiser step shares: where it runs, the objective and the step's size."""

    engine: Engine
    model: Any
    spec: PairLossSpec
    size: StepSize
    pad_id: int


def accumulate_irft_step(
    engine: Engine,
    model: Any,
    snapshot: Snapshot,
    pairs: list[Pair],
    micro_batches: list[list[int]],
    pad_id: int,
    spec: PairLossSpec,
) -> dict[str, float]:
    """Forward/backward the micro-batches of one optimiser step; returns the step's metrics (over all processes)."""
    local = {
        "pairs": sum(len(ids) for ids in micro_batches),
        "tokens": sum(len(pairs[i].demo.response_ids) for ids in micro_batches for i in ids),
    }
    # A collective on every process, before any backward: each micro-batch's loss is its share of the whole step.
    counts = engine.reduce(local, reduction="sum")
    size = StepSize(counts["pairs"], counts["tokens"], engine.world_size)
    totals = torch.zeros(len(IRFT_METRICS), dtype=torch.float64)
    backward = PAIR_BACKWARDS[spec.pair_forward]
    step = PairStep(engine, model, spec, size, pad_id)
    for k, ids in enumerate(micro_batches):
        chunk = [pairs[i] for i in ids]
        ref_demo, ref_gen = snapshot.logps(ids, chunk, pad_id, engine.device)
        terms, loss, demo_logps, gen_logps = backward(step, chunk, ref_demo, ref_gen, k == len(micro_batches) - 1)
        # The loss part is already this micro-batch's share of the step's loss; the rest are per-pair sums.
        parts = [loss * size.pairs, terms.demo_reward.sum(), terms.gen_reward.sum(), terms.margin.sum()]
        parts += [(terms.margin > 0).float().sum(), demo_logps.sum(), gen_logps.sum()]
        totals += torch.stack([p.double().cpu() for p in parts])
    summed = engine.reduce(dict(zip(IRFT_METRICS, totals.tolist(), strict=True)), reduction="sum")
    metrics = {name: value / max(size.pairs, 1.0) for name, value in summed.items()}
    local_gen = sum(len(pairs[i].gen.response_ids) for ids in micro_batches for i in ids)
    gen_tokens = engine.reduce({"t": local_gen}, reduction="sum")["t"]
    metrics["train/tokens"] = size.tokens + gen_tokens
    # log π_θ(ỹ) − log π_ref(ỹ) over every generated token of the step: the overfit rule's length-free measure.
    metrics["irft/gen_logratio_per_token"] = summed["irft/gen_reward"] / spec.beta / max(gen_tokens, 1.0)
    return metrics


PairBackward = tuple[IRFTTerms, torch.Tensor, torch.Tensor, torch.Tensor]


def pair_forward(config: IRFTConfig, model: Any = None) -> str:
    """Resolve ``irft.pair_forward=auto`` by measurement (docs/performance.md): joint under gradient
    checkpointing; without it, shared on CPU where ``model`` takes the block mask (1.42x SFT's step time against
    split's 2.22x, the same peak memory, at 64+64 tokens), else split. Not yet measured on a GPU: split there."""
    if config.irft.pair_forward != "auto":
        return config.irft.pair_forward
    if config.model.gradient_checkpointing:
        return "joint"
    on_cpu = model is not None and next(model.parameters()).device.type == "cpu"
    return "shared" if on_cpu and block_mask_problem(model) is None else "split"


def pair_loss(
    demo_logps: torch.Tensor,
    gen_logps: torch.Tensor,
    ref_demo: torch.Tensor,
    ref_gen: torch.Tensor,
    demo_tokens: TokenLogps,
    spec: PairLossSpec,
    size: StepSize,
) -> tuple[IRFTTerms, torch.Tensor]:
    """One micro-batch's share of the step objective: ℓ(margin) summed over its pairs / the step's pairs, plus
    ``sft_weight`` × its demonstrations' NLL / the step's demonstration tokens."""
    terms = irft_loss(demo_logps, gen_logps, ref_demo, ref_gen, spec.beta, spec.loss)
    loss = terms.loss.sum() / max(size.pairs, 1.0)
    if spec.sft_weight:
        loss = loss + spec.sft_weight * sft_nll(demo_tokens, n_tokens=size.tokens)
    return terms, loss


def joint_tokens(
    model: Any, chunk: list[Pair], pad_id: int, device: torch.device, width: int | None = None
) -> tuple[TokenLogps, TokenLogps]:
    """Demonstrations and generations in one forward of 2B rows: fastest, twice SFT's activation memory."""
    assert width is None, "only shared rows are packed (the config refuses train.packing otherwise)"
    tokens = model_token_logps(model, **pair_batch(chunk, pad_id, device))
    half = len(chunk)
    return TokenLogps(tokens.logps[:half], tokens.mask[:half]), TokenLogps(tokens.logps[half:], tokens.mask[half:])


def shared_tokens(
    model: Any, chunk: list[Pair], pad_id: int, device: torch.device, width: int | None = None
) -> tuple[TokenLogps, TokenLogps]:
    """One row per pair, ``[prompt | demonstration | generation]``, with a mask that hides the demonstration from
    the generation: the prompt's forward (and its activations) is shared by both; with ``width`` several pairs
    packed to a row (less padding computed, the same log-probs)."""
    return shared_split_logps(model, shared_pair_batch(chunk, pad_id, device, width))


def one_pass_backward(
    read: Any, step: PairStep, chunk: list[Pair], ref_demo: torch.Tensor, ref_gen: torch.Tensor, last: bool
) -> PairBackward:
    """Both halves' log-probs from one forward (``read``: :func:`joint_tokens` or :func:`shared_tokens`), one
    backward of the micro-batch's share of the step loss."""
    with step.engine.accumulate(step.model, last):
        demo_tokens, gen_tokens = read(step.model, chunk, step.pad_id, step.engine.device, step.spec.packing_width)
        demo_logps, gen_logps = sequence_logps(demo_tokens, "sum"), sequence_logps(gen_tokens, "sum")
        terms, loss = pair_loss(demo_logps, gen_logps, ref_demo, ref_gen, demo_tokens, step.spec, step.size)
        step.engine.backward(loss * step.size.processes)
    return terms, loss.detach(), demo_logps.detach(), gen_logps.detach()


joint_pair_backward = functools.partial(one_pass_backward, joint_tokens)
shared_pair_backward = functools.partial(one_pass_backward, shared_tokens)


def split_pair_backward(
    step: PairStep, chunk: list[Pair], ref_demo: torch.Tensor, ref_gen: torch.Tensor, last: bool
) -> PairBackward:
    """The same gradient with one half's activations alive at a time (SFT memory), for one extra no-grad
    forward of the generations.

    The loss couples the halves only through the scalar log-probs, so: forward the generations without grad
    and the demonstrations with, backward the loss through the demonstrations and into a leaf holding the
    generations' log-probs (giving ∂loss/∂log π(ỹ) per row), then forward the generations again with grad
    and backward that coefficient times their log-probs. This needs the two generation forwards to agree,
    which is why dropout is off in IRFT (``train.dropout``).
    """
    demo_batch = batch_on([p.demo for p in chunk], step.pad_id, step.engine.device)
    gen_batch = batch_on([p.gen for p in chunk], step.pad_id, step.engine.device)
    # The no-grad pass goes first so its logits are freed before the demonstrations' graph is built.
    with torch.no_grad():
        gen_leaf = sequence_logps(model_token_logps(step.model, **gen_batch), "sum").requires_grad_(True)
    with step.engine.accumulate(step.model, last=False):
        demo_tokens = model_token_logps(step.model, **demo_batch)
        demo_logps = sequence_logps(demo_tokens, "sum")
        terms, loss = pair_loss(demo_logps, gen_leaf, ref_demo, ref_gen, demo_tokens, step.spec, step.size)
        # The coefficient is taken from the loss itself, not from gen_leaf.grad after the engine's backward: under
        # an fp16 GradScaler that grad already carries the loss scale, and the second backward would scale it again.
        (coef,) = torch.autograd.grad(loss * step.size.processes, gen_leaf, retain_graph=True)
        step.engine.backward(loss * step.size.processes)
    with step.engine.accumulate(step.model, last):
        gen_logps = sequence_logps(model_token_logps(step.model, **gen_batch), "sum")
        step.engine.backward((coef.detach() * gen_logps).sum())
    return terms, loss.detach(), demo_logps.detach(), gen_logps.detach()


PAIR_BACKWARDS: dict[str, Callable[..., PairBackward]] = {
    "split": split_pair_backward,
    "joint": joint_pair_backward,
    "shared": shared_pair_backward,
}
