"""The paper's protocol in one run: an SFT phase (``sft_phase``), then IRFT or RFT from the model it trained.

``OUTPUT_DIR/sft/`` is an ordinary SFT run (its own config.yaml, metrics.jsonl, checkpoints/ and final/); the
reward-learning phase then trains in ``OUTPUT_DIR`` from ``OUTPUT_DIR/sft/final``, so its first snapshot (IRFT) or
its initial policy (RFT) is the SFT model. Rerunning with ``resume=true`` continues whichever phase was stopped: a
finished SFT phase is never retrained, and it is refused if its settings are no longer the run's.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from rewardsft.config import RunConfig, flatten, load_config
from rewardsft.errors import ConfigError
from rewardsft.layout import CONFIG_FILE, FINAL
from rewardsft.training.run import check_output_dir

PHASE_DIR = "sft"
CARRIED_TRAIN = (
    "batch_size",
    "eval_batch_size",
    "grad_accum",
    "max_grad_norm",
    "save_every",
    "keep_checkpoints",
    "eval_every",
    "log_every",
    "on_nonfinite",
)
"""The run's ``train`` settings its SFT phase shares; its length is ``sft_phase.epochs`` and its dropout SFT's
default (the reward-learning recipes switch dropout off for their own reasons, which SFT does not have)."""
CARRIED_OPTIM = ("schedule", "warmup_ratio", "weight_decay", "eps")
"""The run's ``optim`` settings its SFT phase shares; it trains with AdamW (SFT's optimiser) at ``sft_phase.lr``."""
IGNORED_ON_RESUME = ("resume", "overwrite", "logging")


def has_sft_phase(config: RunConfig) -> bool:
    return config.method != "sft" and config.sft_phase.epochs > 0


def phase_config(config: RunConfig, resume: bool) -> RunConfig:
    """The SFT phase of ``config``: what ``rewardsft train sft`` would run on the same model, data and batches."""
    values: dict[str, Any] = {
        section: dataclasses.asdict(getattr(config, section)) for section in ("model", "lora", "data", "logging")
    }
    values["train"] = {key: getattr(config.train, key) for key in CARRIED_TRAIN} | {"epochs": config.sft_phase.epochs}
    values["optim"] = {key: getattr(config.optim, key) for key in CARRIED_OPTIM} | {
        "name": "adamw",
        "lr": config.sft_phase.lr,
    }
    values |= {"output_dir": str(Path(config.output_dir) / PHASE_DIR), "seed": config.seed, "resume": resume}
    return load_config("sft", overrides=values)


def run_sft_phase(config: RunConfig) -> RunConfig:
    """Train (or resume, or reuse) the SFT phase; returns the reward-learning phase's config, which starts from
    its ``final/`` and continues ``OUTPUT_DIR`` (whose ``sft/`` folder it must not clear)."""
    from rewardsft.recipes.sft import train_sft

    out = check_output_dir(config)  # before anything is written, as any run
    folder, fresh = out / PHASE_DIR, config.overwrite
    # Every process decides from what was there before the main one clears it (the SFT phase's own start is the
    # first barrier; it clears its folder again, harmlessly, under overwrite).
    phase = phase_config(config, resume=not fresh and folder.is_dir() and any(folder.iterdir()))
    phase = dataclasses.replace(phase, overwrite=fresh)
    if fresh and out.exists() and main_process():
        shutil.rmtree(out)
    if not fresh and (folder / CONFIG_FILE).is_file():
        check_same_phase(folder, phase)
    if fresh or not (folder / FINAL).is_dir():
        say(f"sft phase: {config.sft_phase.epochs} pass(es) at lr {config.sft_phase.lr:g} into {folder}")
        train_sft(phase)
    say(f"{config.method} phase: from {folder / FINAL}")
    model = dataclasses.replace(config.model, name_or_path=str(folder / FINAL))
    # resume: OUTPUT_DIR holds sft/ now; with no checkpoint of this phase there, it starts from the beginning.
    return dataclasses.replace(config, model=model, overwrite=False, resume=True)


def main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def say(message: str) -> None:
    if main_process():
        print(message, flush=True)


def check_same_phase(folder: Path, phase: RunConfig) -> None:
    """A stopped or finished SFT phase continues only under the settings it was started with."""
    before = flatten(yaml.safe_load((folder / CONFIG_FILE).read_text()))
    now = flatten(phase.to_dict())
    changed = [
        key
        for key in sorted(set(before) | set(now))
        if key.split(".")[0] not in IGNORED_ON_RESUME and before.get(key) != now.get(key)
    ]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"{folder} (the run's SFT phase) was trained with {key}={before.get(key)!r}, but this run now sets "
            f"{now.get(key)!r}: rerun with the settings it was started with, or use another output_dir "
            "(or overwrite=true)"
        )
