"""The engine seam: the one small interface recipes and steps talk to about processes and sharding.

A recipe never asks which engine runs. It prepares its policy and optimiser, accumulates micro-batches, calls
``backward``, steps through :func:`rewardsft.training.step.optimizer_step`, reduces and gathers metrics, and
saves full weights, all through an :class:`Engine`. Each backend is a subclass:

- :class:`AccelerateEngine`: one process, or DDP over several (``accelerate launch`` / ``torchrun``), as
  accelerate prepares them; fp16/bf16 mixed precision and its loss scaler come from accelerate too.
- :class:`FSDP2Engine`: parameters sharded with ``fully_shard`` (:mod:`rewardsft.sharding`, which says why
  rewardsft shards itself instead of through ``accelerator.prepare``); every forward is a collective.

Adding an engine is one subclass and a line in :func:`make_engine`. The rules an engine imposes on every method
live here; the rules a method adds (IRFT's snapshot modes under sharding, RFT's even rounds) live in its recipe
(``recipes.common.EngineRules``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import torch

from rewardsft.config import RunConfig
from rewardsft.errors import ConfigError
from rewardsft.sharding import fsdp_requested, full_model_state, shard_model

T = TypeVar("T")


class Engine:
    """Processes, devices and the model/optimiser plumbing of one run (the plain-process and DDP behaviour; the
    sharded backends override what differs)."""

    name: ClassVar[str] = "none"
    sharded: ClassVar[bool] = False
    """Parameters are split over the processes: every forward is a collective, and full weights and optimiser
    state must be gathered to be saved."""

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

    def prepare(self, model: Any) -> Any:
        """The policy ready to train; build its optimiser from the returned model's parameters afterwards."""
        return self.accelerator.prepare(model)

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> Any:
        return self.accelerator.prepare(optimizer)

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
        gradients first; None where the engine clips inside its own step."""
        return self.accelerator.clip_grad_norm_(params, limit)  # type: ignore[no-any-return]

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
        self.name = "ddp" if accelerator.num_processes > 1 else "none"  # type: ignore[misc]


class FSDP2Engine(Engine):
    """FSDP2: ``fully_shard`` per transformer block (:func:`rewardsft.sharding.shard_model`)."""

    name = "fsdp2"
    sharded = True

    def prepare(self, model: Any) -> Any:
        return shard_model(model.to(self.device))

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> Any:
        return optimizer

    def accumulate(self, model: Any, last: bool) -> AbstractContextManager[Any]:
        # Every micro-batch reduce-scatters its gradients into the shards (the sum is the same; no_sync is DDP's).
        return nullcontext()

    def clip_grad_norm(self, params: Any, limit: float) -> torch.Tensor | None:
        norm = self.accelerator.clip_grad_norm_(params, limit)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor over the shards

    def full_weights(self, model: Any) -> dict[str, torch.Tensor] | None:
        return full_model_state(model)


def make_engine(config: RunConfig, trackers: list[str] | None = None) -> Engine:
    """The engine the launch asks for (accelerate's config and environment), after the rules every method shares.
    ``trackers``: the run's (checked) ``logging.report_to``, which accelerate takes at construction."""
    from accelerate import Accelerator

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), log_with=trackers or None, project_dir=config.output_dir
    )
    return engine_for(accelerator, config)


def engine_for(accelerator: Any, config: RunConfig) -> Engine:
    """The backend for ``accelerator``'s launch, refusing what no method can run on it."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            "DeepSpeed is not supported yet; shard with FSDP2 instead: configs/accelerate/fsdp.yaml (full shard, "
            "like ZeRO-3) or fsdp_grad_op.yaml (like ZeRO-2)"
        )
    if accelerator.mixed_precision == "fp16" and config.model.dtype in ("float16", "bfloat16"):
        raise ConfigError(
            f"mixed_precision=fp16 with model.dtype={config.model.dtype}: fp16 mixed precision trains float32 "
            "weights under autocast with a loss scaler, which cannot unscale half-precision gradients; set "
            "model.dtype=auto (float32 under mixed precision) or float32"
        )
    if not fsdp_requested():
        return AccelerateEngine(accelerator)
    check_fsdp(accelerator, config)
    return FSDP2Engine(accelerator)


def check_fsdp(accelerator: Any, config: RunConfig) -> None:
    """Refuse FSDP2 outside a distributed launch and with the settings it does not support."""
    if not torch.distributed.is_initialized():
        raise ConfigError(
            "FSDP was requested (ACCELERATE_USE_FSDP) but this is not a distributed launch; start with "
            "`accelerate launch --config_file configs/accelerate/fsdp.yaml` or `torchrun`"
        )
    if config.lora.enabled:
        raise ConfigError("lora.enabled=true with FSDP is not supported yet; train LoRA with DDP (ddp.yaml)")
    if accelerator.mixed_precision != "no":
        raise ConfigError(
            f"mixed_precision={accelerator.mixed_precision} with FSDP is not supported (the model is loaded in "
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
