"""Atomic checkpoints (write to a temporary folder, then rename) and resume.

Layout of ``output_dir/checkpoints/step-N/``: ``model/`` (full weights, loadable with
``from_pretrained``) or ``adapter/`` (LoRA), ``optimizers.pt`` (each named optimiser's and schedule's state:
``policy``, and ``reward_model`` for RFT), ``rng.pt`` and ``state.json`` (step and recipe state). A folder without ``state.json`` is incomplete and never resumed from.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rewardsft.errors import ConfigError
from rewardsft.layout import CHECKPOINTS
from rewardsft.training.engine import Engine, loss_scaler

STATE_FILE = "state.json"
RNG_FILE = "rng.pt"
OPTIMIZERS_FILE = "optimizers.pt"
POLICY = "policy"
"""The name of the optimiser that trains the policy (the model a run shards)."""
Optimizers = dict[str, tuple[torch.optim.Optimizer, Any]]
"""Named (optimiser, LR schedule) pairs of a recipe, e.g. ``{"policy": (opt, sched)}``."""
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoint_dirs(output_dir)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # A checkpoint from a machine with more GPUs holds more states than this one has devices.
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def tmp_dir(output_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before it is committed (the same path on every process)."""
    return output_dir / CHECKPOINTS / f".tmp-step-{step}"


def begin_checkpoint(output_dir: Path, step: int) -> Path:
    """A fresh temporary folder to write checkpoint ``step`` into."""
    tmp = tmp_dir(output_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def optimizer_states(optimizers: Optimizers, engine: Engine, policy: Any) -> dict[str, Any]:
    """Each named optimiser's and schedule's state; the ``policy`` optimiser's as ``engine`` keeps it (gathered in
    full and keyed by parameter name where it is sharded: a collective, every process calls this; rank 0 gets it)."""
    states = {}
    for name, (opt, sched) in optimizers.items():
        optimizer_state = engine.optimizer_state(policy, opt) if name == POLICY else opt.state_dict()
        states[name] = {"optimizer": optimizer_state, "scheduler": sched.state_dict()}
        scaler = loss_scaler(opt)
        if scaler is not None:
            # fp16: a resumed run goes on at the loss scale it reached, not back at the start with its skips.
            states[name]["scaler"] = scaler.state_dict()
    return states


def write_training_state(tmp: Path, states: dict[str, Any], state: dict[str, Any]) -> None:
    """``optimizers.pt`` (from :func:`optimizer_states`), ``rng.pt``, then ``state.json``."""
    torch.save(states, tmp / OPTIMIZERS_FILE)
    torch.save(rng_state(), tmp / RNG_FILE)
    # state.json last: its presence marks the checkpoint complete.
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))


def commit_checkpoint(output_dir: Path, tmp: Path, step: int, keep: int) -> Path:
    """Rename the finished temporary folder into place, then prune to the newest ``keep``."""
    final = output_dir / CHECKPOINTS / f"step-{step}"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for _, old in checkpoint_dirs(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_training_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())  # type: ignore[no-any-return]


def restore_optimizers(checkpoint: Path, optimizers: Optimizers, engine: Engine, policy: Any) -> None:
    """Load each named optimiser's and schedule's state from ``checkpoint``; ``policy`` is the model the ``policy``
    optimiser trains, restored by ``engine`` (its state may be keyed by parameter name, written by a sharded run,
    and is sharded again when ``policy`` is)."""
    if not (checkpoint / OPTIMIZERS_FILE).is_file():
        raise ConfigError(
            f"{checkpoint} has no {OPTIMIZERS_FILE}: it was written by an older rewardsft and cannot be resumed; "
            "start again with overwrite=true"
        )
    # On CPU first: the saving process's GPU may not be this one's (loading moves each state to its parameter).
    states = torch.load(checkpoint / OPTIMIZERS_FILE, weights_only=True, map_location="cpu")
    for name, (optimizer, scheduler) in optimizers.items():
        if name == POLICY:
            engine.load_optimizer_state(policy, optimizer, states[name]["optimizer"], checkpoint)
        else:
            optimizer.load_state_dict(states[name]["optimizer"])
        scheduler.load_state_dict(states[name]["scheduler"])
        scaler = loss_scaler(optimizer)
        if scaler is not None and "scaler" in states[name]:
            scaler.load_state_dict(states[name]["scaler"])


def restore_rng(checkpoint: Path) -> None:
    set_rng_state(torch.load(checkpoint / RNG_FILE, weights_only=True))
