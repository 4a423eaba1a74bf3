"""The engine seam: the one small interface recipes and steps talk to about processes and sharding.

A recipe never asks which engine runs. It prepares its policy and optimiser, accumulates micro-batches, calls
``backward``, steps through :func:`rewardsft.training.step.optimizer_step`, reduces and gathers metrics, and
saves full weights, all through an :class:`Engine`. Each backend is a subclass:

- :class:`AccelerateEngine`: one process, or DDP over several (``accelerate launch`` / ``torchrun``), as
  accelerate prepares them; fp16/bf16 mixed precision and its loss scaler come from accelerate too.
- :class:`FSDP2Engine`: parameters sharded with ``fully_shard`` (:mod:`rewardsft.sharding`, which says why
  rewardsft shards itself instead of through ``accelerator.prepare``); every forward is a collective.
- :class:`DeepSpeedEngine`: ZeRO-2 or ZeRO-3, DeepSpeed called directly with settings read from the launch
  (:mod:`rewardsft.training.zero`). Under ZeRO-3 every process first loads the whole model; the
  shards exist once ``deepspeed.initialize`` has partitioned it.

Adding an engine is one subclass and a line in :func:`make_engine`. The rules an engine imposes on every method
live here; the rules a method adds (IRFT's snapshot modes under sharding, RFT's even rounds) are the
:class:`EngineRules` its step components declare (``steps.stages.IRFT_RULES``, ``steps.rollout.RFT_RULES``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from rewardsft.config import RunConfig
from rewardsft.errors import ConfigError
from rewardsft.sharding import (
    fsdp_requested,
    full_model_state,
    full_optimizer_state,
    load_optimizer_state,
    shard_model,
    torch_optimizer,
)
from rewardsft.training.zero import DEEPSPEED_ENV, deepspeed_requested, deepspeed_settings, environment_without

T = TypeVar("T")
OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
"""Builds an optimiser from the parameters it trains (``training.optim.build_optimizer`` with the run's settings)."""


def loss_scaler(optimizer: Any) -> Any | None:
    """The fp16 ``GradScaler`` accelerate attached to this (prepared) optimiser, or None."""
    return getattr(optimizer, "scaler", None)


class Engine:
    """Processes, devices and the model/optimiser plumbing of one run (the plain-process and DDP behaviour; the
    sharded backends override what differs)."""

    name: str = "none"
    sharded: bool = False
    """Parameters are split over the processes: every forward is a collective, and full weights and optimiser
    state must be gathered to be saved."""
    scaled_fp16: bool = False
    """The policy's float16 weights train under the engine's own loss scaler with fp32 master weights (DeepSpeed's
    fp16): a model the engine does not manage (RFT's reward model) would get neither."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    @property
    def rank(self) -> int:
        return self.accelerator.process_index  # type: ignore[no-any-return]

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes  # type: ignore[no-any-return]

    @property
    def device(self) -> torch.device:
        return self.accelerator.device  # type: ignore[no-any-return]

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process  # type: ignore[no-any-return]

    def prepare(self, model: Any, make_optimizer: OptimizerFactory) -> tuple[Any, Any]:
        """The policy and its optimiser ready to train: ``make_optimizer`` builds the optimiser from the parameters
        the engine trains (shards under FSDP2; DeepSpeed takes the two together). Build the learning-rate schedule
        on :func:`torch_optimizer` of the returned optimiser."""
        model = self.accelerator.prepare(model)
        return model, self.accelerator.prepare(make_optimizer(model.parameters()))

    def fresh_optimizer(self, model: Any, optimizer: Any, make_optimizer: OptimizerFactory) -> Any:
        """An optimiser with no state for the prepared ``model`` (IRFT's ``irft.reset_optimizer_each_stage``)."""
        return self.accelerator.prepare(make_optimizer(model.parameters()))

    def base_optimizer(self, optimizer: Any) -> torch.optim.Optimizer:
        """The torch optimiser under the engine's wrapper: what a learning-rate schedule is built on."""
        return torch_optimizer(optimizer)  # type: ignore[no-any-return]

    def unwrap(self, model: Any) -> Any:
        """The module itself (no DDP wrapper): what generation and saving read."""
        return self.accelerator.unwrap_model(model)

    def accumulate(self, model: Any, last: bool) -> AbstractContextManager[Any]:
        """Around a micro-batch's forward and backward: gradients synchronise on the step's last one only."""
        return nullcontext() if last else self.accelerator.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled by the fp16 loss scaler where mixed precision has one."""
        self.accelerator.backward(loss)

    def clip_grad_norm(self, params: Any, limit: float) -> torch.Tensor | None:
        """Clip to ``limit`` (``inf``: measure only) and return the global norm before clipping, unscaling fp16
        gradients first; None where the engine clips inside its own step (:meth:`apply_step` then reports it)."""
        return self.accelerator.clip_grad_norm_(params, limit)  # type: ignore[no-any-return]

    def apply_step(self, optimizer: Any) -> tuple[float | None, bool]:
        """Apply the optimiser step; returns the gradient norm where the engine measured it inside its step (else
        None) and whether the step was skipped (an fp16 loss scaler's overflow)."""
        optimizer.step()
        return None, bool(getattr(optimizer, "step_was_skipped", False))

    def loss_scale(self, optimizer: Any) -> tuple[float, float] | None:
        """The fp16 loss scale the coming step's gradients carry and the lowest the scaler goes (an overflow at
        that floor is the loss or gradient itself, which no scale helps); None without a loss scaler."""
        scaler = loss_scaler(optimizer)
        return None if scaler is None else (float(scaler.get_scale()), 1.0)

    def optimizer_state(self, model: Any, optimizer: Any) -> dict[str, Any] | None:
        """The policy optimiser's state for a checkpoint (a collective where it is sharded; rank 0's is written);
        None where the engine keeps it in its own files (:meth:`save_engine_state`)."""
        return full_optimizer_state(model, optimizer) if self.sharded else optimizer.state_dict()

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict[str, Any] | None, checkpoint: Path) -> None:
        """Restore what :meth:`optimizer_state` (or another engine's) wrote."""
        if state is None:
            raise ConfigError(
                f"{checkpoint} keeps its optimiser state in DeepSpeed's own files; resume it with DeepSpeed on as many "
                "processes as wrote it"
            )
        load_optimizer_state(model, optimizer, state)

    def save_engine_state(self, model: Any, folder: Path) -> None:
        """Files of the engine's own inside a checkpoint being written (every process calls it, after ``folder``
        exists); nothing for engines whose state :meth:`optimizer_state` returns."""

    def optimizer_state_bytes(self, param: torch.Tensor, moments: int) -> int:
        """Bytes per element of ``param`` a checkpoint holds for its optimiser state (the disk check)."""
        return param.element_size() * moments

    def reduce(self, metrics: Mapping[str, float], reduction: Literal["mean", "sum"] = "mean") -> dict[str, float]:
        """The same numbers on every process: each metric's mean (or sum) over processes (a collective)."""
        if self.world_size == 1 or not metrics:
            return dict(metrics)
        names = sorted(metrics)
        values = torch.tensor([float(metrics[n]) for n in names], dtype=torch.float64, device=self.device)
        reduced = self.accelerator.reduce(values, reduction=reduction)
        return dict(zip(names, reduced.tolist(), strict=True))

    def reduce_tensor(self, tensor: torch.Tensor, reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
        return tensor if self.world_size == 1 else self.accelerator.reduce(tensor, reduction=reduction)

    def gather(self, items: list[T]) -> list[T]:
        """Concatenate a picklable list from every process, in rank order."""
        if self.world_size == 1:
            return items
        from accelerate.utils import gather_object

        return list(gather_object(items))  # type: ignore[no-untyped-call]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def full_weights(self, model: Any) -> dict[str, torch.Tensor] | None:
        """The whole model's weights for a checkpoint or ``final/`` (every process calls it; rank 0's are the
        ones written); None: the unwrapped module's own ``state_dict`` is whole already."""
        return None

    @contextmanager
    def decoding(self, model: Any) -> Iterator[Any]:
        """The model to generate with, for the duration of the block (a sharded backend may gather weights or
        decode in lockstep: generation calls it the same way on every process)."""
        yield self.unwrap(model)


class AccelerateEngine(Engine):
    """One process, or DDP over several, prepared by accelerate."""

    def __init__(self, accelerator: Any):
        super().__init__(accelerator)
        self.name = "ddp" if accelerator.num_processes > 1 else "none"


class FSDP2Engine(Engine):
    """FSDP2: ``fully_shard`` per transformer block (:func:`rewardsft.sharding.shard_model`)."""

    name = "fsdp2"
    sharded = True

    def prepare(self, model: Any, make_optimizer: OptimizerFactory) -> tuple[Any, Any]:
        model = shard_model(model.to(self.device))
        return model, make_optimizer(model.parameters())

    def fresh_optimizer(self, model: Any, optimizer: Any, make_optimizer: OptimizerFactory) -> Any:
        return make_optimizer(model.parameters())

    def accumulate(self, model: Any, last: bool) -> AbstractContextManager[Any]:
        # Every micro-batch reduce-scatters its gradients into the shards (the sum is the same; no_sync is DDP's).
        return nullcontext()

    def clip_grad_norm(self, params: Any, limit: float) -> torch.Tensor | None:
        norm = self.accelerator.clip_grad_norm_(params, limit)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor over the shards

    def full_weights(self, model: Any) -> dict[str, torch.Tensor] | None:
        return full_model_state(model)


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO-2 (optimiser state and gradients partitioned) or ZeRO-3 (parameters too), called directly:
    accelerate's own integration does not engage on CPU (it silently runs DDP there), so one path serves gloo/CPU
    and NCCL/GPU, as :class:`FSDP2Engine` does (docs/LOG.md, 2026-12-01).

    What differs from the other engines, and why:

    - the policy's forwards with gradients go through DeepSpeed's engine (under ZeRO-3 a forward of the bare module
      accumulates wrong gradients over micro-batches: measured); recipes hold the engine as their model;
    - rewardsft accumulates micro-batches itself (``gradient_accumulation_steps`` is 1) and marks the step's last
      backward as DeepSpeed's accumulation boundary, so IRFT's split backward (two backwards per micro-batch) and
      uneven last steps need nothing of their own;
    - DeepSpeed clips inside its step (``gradient_clipping`` = ``train.max_grad_norm``) and reports the norm after;
    - ``model.dtype=float16`` trains under DeepSpeed's own dynamic loss scaler: every ``backward`` scales its own
      loss once (IRFT's split pair backward included) and the step unscales the sum once; an overflow is skipped
      by DeepSpeed, and only one at the scaler's floor meets ``train.on_nonfinite`` (as accelerate's fp16 does);
    - under ZeRO-3 generation gathers the whole weights once per sampling call (``generation.zero3_gather``;
      measured faster than lockstep decoding at about the same memory, benchmarks/zero3_decoding.py);
    - the optimiser state lives in DeepSpeed's own checkpoint files (``checkpoints/step-N/deepspeed/``), one per
      process: a checkpoint resumes with DeepSpeed on as many processes as wrote it.
    """

    def __init__(self, accelerator: Any, settings: dict[str, Any], gather_for_decoding: bool = True):
        super().__init__(accelerator)
        self.settings = settings
        self.stage = int(settings["zero_optimization"]["stage"])
        self.name = f"deepspeed-zero{self.stage}"
        self.sharded = self.stage == 3
        self.gather_for_decoding = gather_for_decoding and self.sharded
        self.scaled_fp16 = bool(settings["fp16"]["enabled"])
        self.said_gathered = False
        self.ds: Any = None

    def prepare(self, model: Any, make_optimizer: OptimizerFactory) -> tuple[Any, Any]:
        import deepspeed

        if self.ds is not None:
            raise RuntimeError("DeepSpeedEngine prepares one policy per run")
        model = model.to(self.device)
        optimizer = make_optimizer(model.parameters())
        self.ds, ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.settings, dist_init_required=False
        )
        if self.scaled_fp16:
            # At its floor DeepSpeed would raise a bare Exception; skipping there lets train.on_nonfinite decide.
            ds_optimizer.loss_scaler.raise_error_at_min_scale = False
        return self.ds, ds_optimizer

    def fresh_optimizer(self, model: Any, optimizer: Any, make_optimizer: OptimizerFactory) -> Any:
        # DeepSpeed takes its optimiser once, at initialize: emptying the torch optimiser's state (moments, step
        # counts) under the ZeRO wrapper is what a new optimiser would be.
        torch_optimizer(optimizer).state.clear()
        return optimizer

    def unwrap(self, model: Any) -> Any:
        return model.module if model is self.ds else model

    def accumulate(self, model: Any, last: bool) -> AbstractContextManager[Any]:
        if model is self.ds:
            self.ds.set_gradient_accumulation_boundary(last)
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def clip_grad_norm(self, params: Any, limit: float) -> torch.Tensor | None:
        return None  # clipped inside DeepSpeed's step, at train.max_grad_norm (the settings' gradient_clipping)

    def apply_step(self, optimizer: Any) -> tuple[float | None, bool]:
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        return (None if norm is None else float(norm)), not self.ds.was_step_applied()

    @contextmanager
    def decoding(self, model: Any) -> Iterator[Any]:
        module = self.unwrap(model)
        if not self.gather_for_decoding:
            yield module  # ZeRO-2's weights are whole; ZeRO-3 without gathering decodes in lockstep
            return
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        # Gathers every parameter and lifts ZeRO-3's per-module hooks for the block, so no token's forward gathers
        # a layer and nothing is freed mid-generation; the hooks come back and the weights are partitioned again
        # on leaving. Processes still decode in lockstep (synced_gpus, dummy batches): the hook DeepSpeed keeps on
        # the top module compares step counts across processes in every forward.
        with unwrap_model_for_generation(self.ds):
            if not self.said_gathered:
                self.said_gathered = True
                self.accelerator.print(
                    "ZeRO-3: sampling from the whole weights, gathered once per call (generation.zero3_gather)"
                )
            yield module

    def loss_scale(self, optimizer: Any) -> tuple[float, float] | None:
        if not self.scaled_fp16:
            return None
        scaler = self.ds.optimizer.loss_scaler
        # A static scale (fp16.loss_scale > 0) has no floor below itself: every overflow is the gradient's own.
        return float(scaler.cur_scale), float(getattr(scaler, "min_scale", scaler.cur_scale))

    def full_weights(self, model: Any) -> dict[str, torch.Tensor] | None:
        if not self.sharded:
            return None  # ZeRO-2 keeps whole parameters in every process
        # A collective: every process gathers, rank 0 keeps the weights (in the parameters' own dtype).
        weights = self.ds._zero3_consolidated_16bit_state_dict()
        return {name: tensor.cpu() for name, tensor in (weights or {}).items()}

    def optimizer_state(self, model: Any, optimizer: Any) -> dict[str, Any] | None:
        return None  # in DeepSpeed's own files, written by save_engine_state

    def optimizer_state_bytes(self, param: torch.Tensor, moments: int) -> int:
        # fp32 master weights and moments in its shards, and under ZeRO-2 the module's weights once more.
        return 4 * (1 + moments) + (param.element_size() if self.stage == 2 else 0)

    def save_engine_state(self, model: Any, folder: Path) -> None:
        self.ds.save_checkpoint(str(folder), tag=DEEPSPEED_TAG, save_latest=False)

    def load_optimizer_state(self, model: Any, optimizer: Any, state: dict[str, Any] | None, checkpoint: Path) -> None:
        files = sorted((checkpoint / DEEPSPEED_TAG).glob("*optim_states.pt"))
        if state is not None or not files:
            raise ConfigError(
                f"{checkpoint} was not written by DeepSpeed: resume it under the engine that wrote it (its run.json "
                "names it), or start again with overwrite=true"
            )
        if len(files) != self.world_size:
            raise ConfigError(
                f"{checkpoint} holds DeepSpeed optimiser state for {len(files)} processes; resume it on "
                f"{len(files)} processes (DeepSpeed's ZeRO shards are per process; its ds_to_universal.py converts "
                "them for another count), or start again with overwrite=true"
            )
        self.ds.load_checkpoint(
            str(checkpoint), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )


DEEPSPEED_TAG = "deepspeed"
"""The folder of DeepSpeed's own files inside ``checkpoints/step-N/``."""


def make_engine(config: RunConfig, trackers: list[str] | None = None) -> Engine:
    """The engine the launch asks for (accelerate's config and environment), after the rules every method shares.
    ``trackers``: the run's (checked) ``logging.report_to``, which accelerate takes at construction."""
    from accelerate import Accelerator

    # Under DeepSpeed accelerate only sets up processes and devices: its own DeepSpeed integration stays out of the
    # way (it would prepare the model itself on GPU and run DDP on CPU), and DeepSpeed is called directly.
    with environment_without(DEEPSPEED_ENV if deepspeed_requested() else None):
        accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), log_with=trackers or None, project_dir=config.output_dir
        )
    return engine_for(accelerator, config)


def engine_for(accelerator: Any, config: RunConfig) -> Engine:
    """The backend for ``accelerator``'s launch, refusing what no method can run on it."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            "accelerate prepared DeepSpeed itself; rewardsft calls DeepSpeed directly: launch with the "
            "configs/accelerate/zero*.yaml files or set ACCELERATE_USE_DEEPSPEED=true under torchrun"
        )
    if accelerator.mixed_precision == "fp16" and config.model.dtype in ("float16", "bfloat16"):
        raise ConfigError(
            f"mixed_precision=fp16 with model.dtype={config.model.dtype}: fp16 mixed precision trains float32 "
            "weights under autocast with a loss scaler, which cannot unscale half-precision gradients; set "
            "model.dtype=auto (float32 under mixed precision) or float32"
        )
    generation = getattr(config, "generation", None)
    gather = generation is None or generation.zero3_gather
    if deepspeed_requested():
        if fsdp_requested():
            raise ConfigError("both DeepSpeed and FSDP were requested (ACCELERATE_USE_DEEPSPEED, ACCELERATE_USE_FSDP)")
        check_sharded_launch(accelerator, "DeepSpeed", "ACCELERATE_USE_DEEPSPEED", "zero3.yaml")
        engine = DeepSpeedEngine(
            accelerator, deepspeed_settings(config, accelerator.num_processes, accelerator.device), gather
        )
        if not gather and not engine.sharded:
            raise ConfigError(f"generation.zero3_gather=false applies under ZeRO-3 only; this launch is {engine.name}")
        return engine
    if not gather:
        raise ConfigError("generation.zero3_gather=false applies under DeepSpeed ZeRO-3 only; remove it")
    if not fsdp_requested():
        return AccelerateEngine(accelerator)
    check_fsdp(accelerator, config)
    return FSDP2Engine(accelerator)


def check_fsdp(accelerator: Any, config: RunConfig) -> None:
    """Refuse FSDP2 outside a distributed launch and with the settings it does not support."""
    check_sharded_launch(accelerator, "FSDP", "ACCELERATE_USE_FSDP", "fsdp.yaml")
    if config.lora.enabled:
        raise ConfigError(
            "lora.enabled=true with FSDP is not supported yet; train LoRA with DDP (ddp.yaml) or DeepSpeed (zero3.yaml)"
        )


def check_sharded_launch(accelerator: Any, engine: str, variable: str, example: str) -> None:
    """What FSDP2 and DeepSpeed both refuse: no process group, accelerate's mixed precision."""
    if not torch.distributed.is_initialized():
        raise ConfigError(
            f"{engine} was requested ({variable}) but this is not a distributed launch; start with "
            f"`accelerate launch --config_file configs/accelerate/{example}` or `torchrun`"
        )
    if accelerator.mixed_precision != "no":
        raise ConfigError(
            f"mixed_precision={accelerator.mixed_precision} with {engine} is not supported (the model is loaded in "
            "model.dtype itself: bf16 on GPU by default); set mixed_precision: 'no' in the accelerate config"
        )


@dataclass(frozen=True)
class EngineRules:
    """What a recipe adds to the engine's own rules, checked when its run opens (before anything is written)."""

    check: Callable[[Engine, Any], None] | None = None
    """``check(engine, config)`` raises :class:`ConfigError` for a setting of the method the engine cannot run
    (e.g. IRFT's copy snapshot under sharding)."""
    data_plan: bool = True
    """An optimiser step covers a fixed share of the data (SFT, IRFT): a checkpoint resumes only under the same
    global batch. False for RFT, whose rounds are set in prompts and split over whatever processes run."""
