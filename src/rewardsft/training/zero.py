"""DeepSpeed ZeRO settings, read from the launch and checked against the run's own settings.

A launch asks for DeepSpeed as accelerate's launcher exports it (``accelerate launch --config_file
configs/accelerate/zero3.yaml``: ``ACCELERATE_USE_DEEPSPEED=true`` with ``ACCELERATE_DEEPSPEED_ZERO_STAGE`` and
the offload devices, or ``ACCELERATE_DEEPSPEED_CONFIG_FILE`` naming a DeepSpeed JSON); under ``torchrun`` the same
variables can be set by hand. The run's config stays the one place for what the recipes read: the batch, the
accumulation, the clipping, the optimiser and its schedule, the dtype. A DeepSpeed JSON may leave those ``"auto"``
or repeat them; a value that disagrees, or a section rewardsft does not apply (``optimizer``, ``scheduler``,
``fp16.auto_cast``), is refused naming the key rather than ignored. ``model.dtype=float16`` trains float16 weights
under DeepSpeed's own dynamic loss scaler (its ``fp16`` section's scaler settings are kept).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import RunConfig
from rewardsft.errors import ConfigError
from rewardsft.models import resolve_dtype

DEEPSPEED_ENV = "ACCELERATE_USE_DEEPSPEED"
NEVER_PRINT = 2**62
"""DeepSpeed's ``steps_per_print``: rewardsft logs its own metrics."""


# The DeepSpeed JSON's top-level keys rewardsft applies or checks; any other (``optimizer``, ``scheduler``,
# ``torch_autocast``, ``amp``, ``activation_checkpointing``, ``checkpoint``, ...) changes the arithmetic in ways the
# run's no-grad forwards through the bare module would not share, or duplicates a setting of the run's own.
APPLIED = {
    "zero_optimization",
    "bf16",
    "fp16",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "train_micro_batch_size_per_gpu",
    "train_batch_size",
    "steps_per_print",
    "wall_clock_breakdown",
    "communication_data_type",
    "prescale_gradients",
    "gradient_predivide_factor",
    "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer",
    "flops_profiler",
    "comms_logger",
    "tensorboard",
    "wandb",
    "csv_monitor",
}
TRUE = ("1", "true", "yes", "y", "t", "on")
"""What accelerate's ``str_to_bool`` reads as true."""


def deepspeed_requested() -> bool:
    return os.environ.get(DEEPSPEED_ENV, "false").lower() in TRUE


@contextmanager
def environment_without(name: str | None) -> Iterator[None]:
    """The process environment with ``name`` unset for the block (nothing changes for None)."""
    saved = os.environ.pop(name, None) if name else None
    try:
        yield
    finally:
        if name and saved is not None:
            os.environ[name] = saved


def deepspeed_settings(config: RunConfig, world_size: int, device: torch.device | None = None) -> dict[str, Any]:
    """The DeepSpeed config this run trains under: the launch's ZeRO settings, the run's batch, clipping and dtype
    (``model.dtype`` as it resolves on ``device``: ``auto`` is bf16 on CUDA)."""
    file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    launched = launch_settings()  # its refusals hold with a JSON too
    user = read_json(Path(file)) if file.lower() != "none" else launched
    source = file if file.lower() != "none" else "the accelerate config (ACCELERATE_DEEPSPEED_*)"
    for section in ("optimizer", "scheduler"):
        if section in user:
            raise ConfigError(
                f"{source}: the {section!r} section is not applied (rewardsft builds the optimiser and its schedule "
                "from optim.*); remove it"
            )
    unknown = sorted(set(user) - APPLIED)
    if unknown:
        raise ConfigError(
            f"{source}: {', '.join(unknown)} not applied by rewardsft (they would change the engine's forwards but "
            "not the run's others, or repeat a setting of the run's own); remove them"
        )
    tc = config.train
    clip = tc.max_grad_norm if tc.max_grad_norm is not None else 0.0
    dtype = resolve_dtype(config.model.dtype, device or torch.device("cpu"))
    bf16, fp16 = dtype == torch.bfloat16, dtype == torch.float16
    if user is not launched:  # a JSON named beside an accelerate config: the latter's values must agree too
        accelerate = "the accelerate config (ACCELERATE_*)"
        agree(accelerate, launched, "gradient_accumulation_steps", tc.grad_accum, "train.grad_accum")
        agree(accelerate, launched, "gradient_clipping", clip, "train.max_grad_norm")
    agree(source, user, "gradient_accumulation_steps", tc.grad_accum, "train.grad_accum")
    agree(source, user, "train_micro_batch_size_per_gpu", tc.batch_size, "train.batch_size")
    agree(source, user, "train_batch_size", tc.batch_size * tc.grad_accum * world_size, "global batch")
    agree(source, user, "gradient_clipping", clip, "train.max_grad_norm")
    agree(source, user.get("bf16", {}), "enabled", bf16, "bfloat16 weights (model.dtype)", key="bf16.enabled")
    agree(source, user.get("fp16", {}), "enabled", fp16, "float16 weights (model.dtype)", key="fp16.enabled")
    scaler = loss_scaler_settings(source, user.get("fp16", {}))
    zero = dict(user.get("zero_optimization", {}))
    for kind in ("offload_optimizer", "offload_param"):
        if str(zero.get(kind, {}).get("device", "none")).lower() == "nvme":
            raise ConfigError(f"{source}: zero_optimization.{kind}.device=nvme is not supported; use cpu or none")
    stage = int(zero.get("stage", 0))
    if stage not in (2, 3):
        raise ConfigError(
            f"{source}: zero_optimization.stage={stage}; rewardsft runs DeepSpeed ZeRO-2 or ZeRO-3 (plain data "
            "parallelism is configs/accelerate/ddp.yaml)"
        )
    if stage == 3:
        if zero.get("stage3_gather_16bit_weights_on_model_save") is False:
            raise ConfigError(
                f"{source}: zero_optimization.stage3_gather_16bit_weights_on_model_save=false; final/ and the "
                "checkpoints hold whole weights, gathered on save: set it to true"
            )
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    settings = {key: value for key, value in user.items() if key not in ("zero_optimization", "bf16", "fp16")}
    settings |= {
        "zero_optimization": zero,
        # rewardsft accumulates micro-batches itself and marks the last one as DeepSpeed's boundary.
        "gradient_accumulation_steps": 1,
        "train_micro_batch_size_per_gpu": tc.batch_size,
        "train_batch_size": tc.batch_size * world_size,
        "gradient_clipping": clip,
        "bf16": {"enabled": bf16},
        # float16 weights train under DeepSpeed's own loss scaler (fp32 master weights in its shards).
        "fp16": {**scaler, "enabled": True} if fp16 else {"enabled": False},
        # The optimiser is torch's (optim.name): DeepSpeed's compiled CPU Adam is not needed for offload.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": NEVER_PRINT,
    }
    return settings


FP16_APPLIED = (
    "enabled",
    "loss_scale",
    "initial_scale_power",
    "loss_scale_window",
    "hysteresis",
    "consecutive_hysteresis",
    "min_loss_scale",
)
"""The loss scaler's settings a DeepSpeed JSON's ``fp16`` section may set. ``auto_cast`` would change the engine's
forwards but not the run's no-grad forwards through the bare module; ``fp16_master_weights_and_grads`` changes what
the shards hold, which nothing here measured."""


def loss_scaler_settings(source: str, fp16: dict[str, Any]) -> dict[str, Any]:
    """The ``fp16`` section's loss-scaler settings, refusing the keys rewardsft does not apply."""
    unknown = sorted(set(fp16) - set(FP16_APPLIED))
    if unknown:
        raise ConfigError(
            f"{source}: fp16.{', fp16.'.join(unknown)} not applied by rewardsft (only the loss scaler's "
            f"{', '.join(FP16_APPLIED[1:])}); remove them"
        )
    return {key: value for key, value in fp16.items() if key != "enabled"}


def launch_settings() -> dict[str, Any]:
    """The ZeRO settings ``accelerate launch`` exports from an accelerate config's ``deepspeed_config``."""
    env = os.environ
    if env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false").lower() in TRUE:
        raise ConfigError(
            "zero3_init_flag: true (ACCELERATE_DEEPSPEED_ZERO3_INIT) is not applied: every process loads the whole "
            "model and deepspeed.initialize partitions it; set it to false"
        )
    if env.get("ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES", "none").lower() not in ("none", ""):
        raise ConfigError(
            "deepspeed_moe_layer_cls_names (ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES) is not applied; remove it"
        )
    if env.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "true").lower() not in TRUE:
        raise ConfigError(
            "zero3_save_16bit_model: false (ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL): final/ holds whole weights, "
            "gathered on save; set it to true"
        )
    zero: dict[str, Any] = {"stage": int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))}
    for kind in ("optimizer", "param"):
        device = env.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{kind.upper()}_DEVICE", "none").lower()
        if device == "nvme":
            raise ConfigError(f"offload_{kind}_device: nvme is not supported; use cpu or none")
        if device == "cpu":
            zero[f"offload_{kind}"] = {"device": "cpu"}
    settings: dict[str, Any] = {"zero_optimization": zero}
    for name, key in (
        ("GRADIENT_ACCUMULATION_STEPS", "gradient_accumulation_steps"),
        ("GRADIENT_CLIPPING", "gradient_clipping"),
    ):
        value = env.get(f"ACCELERATE_{name}")
        if value is not None and value.lower() not in ("none", "auto"):
            settings[key] = float(value) if key == "gradient_clipping" else int(value)
    return settings


def read_json(path: Path) -> dict[str, Any]:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"DeepSpeed config {path}: {error}") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"DeepSpeed config {path}: expected a JSON object")
    return settings


def agree(source: str, settings: dict[str, Any], name: str, ours: Any, setting: str, key: str | None = None) -> None:
    """A value the DeepSpeed config may leave ``auto`` or repeat, but not contradict."""
    value = settings.get(name, "auto")
    if value == "auto" or value == ours or (name == "gradient_clipping" and ours == 0.0 and value in (0, None)):
        return
    raise ConfigError(
        f'{source}: {key or name}={value} but the run\'s {setting} is {ours}; make them agree (or "auto" in a '
        "DeepSpeed JSON)"
    )
