"""Sharded parameters: FSDP2 (``torch.distributed.fsdp.fully_shard``), configured the way accelerate configures it.

Why rewardsft applies ``fully_shard`` itself instead of ``accelerator.prepare``: accelerate's FSDP2 preparation
insists on the model and its optimiser being prepared in one call (IRFT builds a fresh optimiser per stage) and
refuses FSDP on CPU, so the sharded path could never be exercised on a machine without GPUs. The settings still
come from accelerate: ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` exports them as
``ACCELERATE_USE_FSDP`` / ``FSDP_*`` variables, which torchrun users can set by hand. One code path therefore
runs under gloo on CPU (tested) and NCCL on GPU.

What sharding changes for the recipes, all handled here or through these helpers:

- every forward of a sharded model is a collective (each block gathers its parameters), so all processes must
  run the same number of forwards: generation and held-out evaluation pad their batch counts with
  :func:`agreed_max` and decode with ``synced_gpus`` (the failure that broke earlier SPIN ports);
- weights and optimiser state are saved in full (gathered to rank 0) and keyed by parameter name, so a run can
  be resumed on any number of processes, sharded or not (:func:`full_model_state`, :func:`full_optimizer_state`,
  :func:`load_optimizer_state`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from rewardsft.errors import ConfigError

FSDP_ENV = "ACCELERATE_USE_FSDP"
T = TypeVar("T")


def fsdp_requested() -> bool:
    """The launch asked for FSDP (``accelerate launch`` with an FSDP config, or the variable set by hand)."""
    return os.environ.get(FSDP_ENV, "false").lower() in ("1", "true", "yes")


def check_fsdp_settings() -> None:
    """Refuse the FSDP settings this path does not implement, instead of silently ignoring them."""
    version = os.environ.get("FSDP_VERSION", "2")
    if version != "2":
        raise ConfigError(
            f"FSDP_VERSION={version}: rewardsft shards with FSDP2 only (fsdp_version: 2 in the accelerate config; "
            "see configs/accelerate/fsdp.yaml)"
        )
    if os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        raise ConfigError("FSDP_OFFLOAD_PARAMS=true (fsdp_offload_params) is not supported; set it to false")
    if os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true":
        # transformers would load real weights on local rank 0 only, and nothing here broadcasts them.
        raise ConfigError("FSDP_CPU_RAM_EFFICIENT_LOADING=true (fsdp_cpu_ram_efficient_loading) is not supported")
    if os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise ConfigError(
            "FSDP_ACTIVATION_CHECKPOINTING=true (fsdp_activation_checkpointing) is not applied by rewardsft; set it "
            "to false and use model.gradient_checkpointing=true"
        )


def is_sharded(model: Any) -> bool:
    """Parameters are shards (FSDP2 DTensors, or DeepSpeed ZeRO-3 partitions): forwards are collectives."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) or hasattr(p, "ds_id") for p in model.parameters())


def shard_model(model: Any) -> Any:
    """``fully_shard`` each transformer block, then the whole model (embeddings, final norm, head).

    Blocks are the classes named in ``FSDP_TRANSFORMER_CLS_TO_WRAP`` (comma-separated), else the model's own
    ``_no_split_modules`` (Llama: ``LlamaDecoderLayer``; GPT-NeoX: ``GPTNeoXLayer``). ``FSDP_RESHARD_AFTER_FORWARD``
    (default true) frees gathered parameters after each block's forward (ZeRO-3-like); false keeps them until the
    backward (ZeRO-2-like: more memory, fewer all-gathers).
    """
    from torch.distributed.fsdp import fully_shard

    check_fsdp_settings()
    names = _block_names(model)
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() != "false"
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError(
            f"FSDP: no module of the classes {sorted(names)} in {type(model).__name__}; set "
            "fsdp_transformer_layer_cls_to_wrap in the accelerate config (FSDP_TRANSFORMER_CLS_TO_WRAP)"
        )
    for block in blocks:
        fully_shard(block, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    return model


def _block_names(model: Any) -> set[str]:
    listed = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    names = {name.strip() for name in listed.split(",") if name.strip()}
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return names or set(getattr(inner, "_no_split_modules", None) or [])


def in_lockstep(model: Any) -> bool:
    """Processes must run the same forwards: ``model`` is sharded over more than one process. So under ZeRO-3
    even with the weights gathered for decoding (``DeepSpeedEngine.decoding``): DeepSpeed's hook on the top
    module still compares step counts across processes in every forward."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and is_sharded(model)


def agreed_max(count: int, model: Any) -> int:
    """``count`` on a plain model; its maximum over processes when ``model`` is sharded, so every process can run
    that many forwards (the extra ones on a dummy batch whose output is dropped)."""
    import torch.distributed as dist

    if not in_lockstep(model):
        return count
    device = next(model.parameters()).device
    value = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def lockstep(batches: Sequence[T], model: Any, dummy: T) -> list[tuple[T, bool]]:
    """``(batch, real)`` for each of ``batches``, then ``(dummy, False)`` until every process has as many: a sharded
    model's forwards are collectives, so a process with fewer batches runs dummy ones and drops their output."""
    extra = agreed_max(len(batches), model) - len(batches)
    return [(batch, True) for batch in batches] + [(dummy, False)] * extra


def full_model_state(model: Any) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU in rank 0 (empty elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_model_state_dict(model, options=options))  # type: ignore[arg-type]


def full_optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimiser's whole state keyed by parameter name, on CPU in rank 0; every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, torch_optimizer(optimizer), options=options)


def load_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Load a state written by :func:`full_optimizer_state` (keyed by name) or by ``optimizer.state_dict()``
    (keyed by position) into ``optimizer``, sharding it when ``model`` is sharded."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not is_sharded(model):
        optimizer.load_state_dict(_by_position(model, state) if keyed_by_name(state) else state)
        return
    if not keyed_by_name(state):
        state = _by_name(model, state)
    set_optimizer_state_dict(model, torch_optimizer(optimizer), state, options=StateDictOptions(full_state_dict=True))


def keyed_by_name(state: dict[str, Any]) -> bool:
    return any(isinstance(key, str) for key in state.get("state", {})) or any(
        isinstance(p, str) for group in state.get("param_groups", []) for p in group.get("params", [])
    )


def _by_name(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """A position-keyed state (an unsharded run's) rekeyed by parameter name: the optimiser was built from
    ``model.parameters()`` in this order, trainable ones only."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }


def _by_position(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed state (a sharded run's) rekeyed by position for an unsharded model (DDP's ``module.`` prefix
    dropped from the names)."""
    names = [name.removeprefix("module.") for name, p in model.named_parameters() if p.requires_grad]
    position = {name: i for i, name in enumerate(names)}
    missing = sorted(set(state["state"]) - set(position))
    if missing:
        raise ConfigError(f"the checkpoint's optimiser state names parameters this model lacks: {missing[:3]}")
    return {
        "state": {position[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [position[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def torch_optimizer(optimizer: Any) -> Any:
    """The torch optimiser under an engine's wrapper (accelerate's, DeepSpeed's ZeRO optimiser): what a learning-rate
    schedule is built on and what holds the parameter groups."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer
