"""The one step idiom every recipe uses.

A recipe's optimiser step is: for each micro-batch, the engine's ``accumulate`` (gradients sync across
processes on the last micro-batch only) around forward + ``engine.backward``; then :func:`optimizer_step`
(clip, step, schedule, zero); then ``engine.reduce`` so every process logs the same numbers, and
:func:`log_due` decides when (the engine: :mod:`rewardsft.training.engine`). Batches go to the device through
``data.collate.batch_on``, models switch mode through ``models.eval_mode``, and every random stream (data order,
sampling) gets its seed from :func:`derive_seed`.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rewardsft.errors import NonFiniteError
from rewardsft.training.engine import Engine, loss_scaler


@dataclass(frozen=True)
class StepStats:
    grad_norm: float
    """Global L2 norm of the gradients before clipping (unscaled under an fp16 loss scaler)."""
    lr: float
    """Learning rate this step used."""
    skipped: bool = False
    """The optimiser did not step: the gradient norm was not finite and ``on_nonfinite="skip"``, or an fp16 loss
    scaler found an overflow (it then lowers its scale, as it is built to)."""
    loss_scale: float | None = None
    """The fp16 loss scale this step's backward used; None without a scaler."""

    def metrics(self, prefix: str = "train") -> dict[str, float]:
        """``{prefix}/grad_norm``, ``{prefix}/lr``, ``{prefix}/loss_scale`` under a scaler and, on a skipped step,
        ``{prefix}/nonfinite_skipped``."""
        out = {f"{prefix}/grad_norm": self.grad_norm, f"{prefix}/lr": self.lr}
        if self.loss_scale is not None:
            out[f"{prefix}/loss_scale"] = self.loss_scale
        return out | ({f"{prefix}/nonfinite_skipped": 1.0} if self.skipped else {})


def optimizer_step(
    engine: Engine | None,
    params: Any,
    optimizer: Any,
    scheduler: Any,
    max_grad_norm: float | None,
    on_nonfinite: str = "stop",
) -> StepStats:
    """Clip the gradients (``None``: measure only), step the optimiser and the schedule, zero the gradients.

    ``engine``: the one that prepared this model and optimiser (it unscales fp16 gradients and clips sharded
    parameters); None for a model it does not manage (RFT's reward model), clipped by plain torch.
    A NaN or infinite gradient norm (the norm is global, so every process decides alike) raises
    :class:`NonFiniteError` before anything is applied (``on_nonfinite="stop"``), or skips the optimiser step
    (``"skip"``; the schedule still advances so the step count and the learning rate stay in line).

    Under an fp16 loss scaler (accelerate's ``mixed_precision=fp16``, DeepSpeed's for float16 weights) overflow is
    expected: the scaler starts high and halves its scale on every overflowing step, which it skips. Such a step is skipped and counted like
    ``"skip"`` whatever ``on_nonfinite`` says; only an overflow at the scaler's floor (1 for accelerate's; the
    unscaled loss or gradient itself is not finite, so no scale will help) meets ``on_nonfinite``.
    """
    scaler = loss_scaler(optimizer)
    scaled = engine.loss_scale(optimizer) if engine is not None else None
    scale = scaled[0] if scaled is not None else None
    limit = max_grad_norm if max_grad_norm is not None else math.inf
    if engine is None:
        grad_norm: Any = torch.nn.utils.clip_grad_norm_(list(params), limit)
    else:
        grad_norm = engine.clip_grad_norm(params, limit)
    lr = float(scheduler.get_last_lr()[0])
    if grad_norm is None:
        assert engine is not None
        return clipped_inside_step(engine, optimizer, scheduler, lr, on_nonfinite, scaled)
    norm = float(grad_norm)
    finite = math.isfinite(norm)
    persistent = not finite and beyond_scaling(scaled)
    if persistent and on_nonfinite == "stop":
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # closes the unscale_ of this step, so the scaler stays usable
        raise NonFiniteError(
            f"the gradient norm is {norm} (a non-finite loss or gradient"
            + (f", at an fp16 loss scale of {scale:g}" if scale is not None else "")
            + "); the step was not applied and the newest checkpoint predates it. Lower optim.lr or check the data, "
            "then rerun with resume=true; or set train.on_nonfinite=skip to skip such steps"
        )
    if scaler is not None:
        optimizer.step()  # the scaler's own step: it skips on overflow and updates its scale either way
        skipped = bool(optimizer.step_was_skipped)
    else:
        if finite:
            optimizer.step()
        skipped = not finite
    advance(scheduler)
    optimizer.zero_grad(set_to_none=True)
    return StepStats(norm, lr, skipped=skipped, loss_scale=scale)


def clipped_inside_step(
    engine: Engine, optimizer: Any, scheduler: Any, lr: float, on_nonfinite: str, scaled: tuple[float, float] | None
) -> StepStats:
    """The step of an engine that clips inside its own step (DeepSpeed): it measures the norm there and, when the
    norm is not finite, leaves the weights as they were and reports the step as not applied. Under its fp16 loss
    scaler (``scaled``: the scale and its floor) such a step is an expected overflow, counted as skipped, unless
    the scale was at its floor; that, and any non-finite step without a scaler, meets ``on_nonfinite``."""
    measured, skipped = engine.apply_step(optimizer)
    norm = float("nan") if measured is None else float(measured)
    nonfinite = skipped or not math.isfinite(norm)
    if nonfinite and beyond_scaling(scaled) and on_nonfinite == "stop":
        raise NonFiniteError(
            f"the gradient norm is {norm} (a non-finite loss or gradient"
            + (f", at the fp16 loss scale's floor of {scaled[0]:g}" if scaled is not None else "")
            + f"); {engine.name} did not apply the step and the newest checkpoint predates it. Lower optim.lr or "
            "check the data, then rerun with resume=true; or set train.on_nonfinite=skip to skip such steps"
        )
    advance(scheduler)
    return StepStats(norm, lr, skipped=nonfinite, loss_scale=None if scaled is None else scaled[0])


def beyond_scaling(scaled: tuple[float, float] | None) -> bool:
    """A non-finite step no loss scale explains: there is no scaler, or its scale (``scaled[0]``) is at its floor."""
    return scaled is None or scaled[0] <= scaled[1]


def advance(scheduler: Any) -> None:
    with warnings.catch_warnings():
        # The schedule advances on a skipped step on purpose; torch warns when the optimiser has not stepped yet.
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        scheduler.step()


def log_due(step: int, log_every: int, last: bool, metrics: Mapping[str, float]) -> bool:
    """Log every ``log_every`` steps, at the last one, whenever a held-out evaluation ran (it is too costly
    to compute and then drop because the two intervals do not line up) and whenever a step was skipped (so the
    rows carrying ``*/nonfinite_skipped`` count every skip)."""
    return (
        step % log_every == 0
        or last
        or any(key.startswith("eval/") or key.endswith("/nonfinite_skipped") for key in metrics)
    )


def derive_seed(seed: int, purpose: str, *parts: int) -> int:
    """A reproducible seed for one random stream, e.g. ``derive_seed(seed, "irft/generate", stage, rank)``.

    Hashing keeps streams independent: with arithmetic such as ``seed + stage`` the run with seed 1 would
    sample stage 1 exactly as the run with seed 2 samples stage 0, and two purposes could collide.
    """
    digest = hashlib.sha256(repr((seed, purpose, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)
