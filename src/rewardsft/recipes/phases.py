"""The paper's protocol in one run: an SFT phase (``sft_phase``), then IRFT or RFT from the model it trained.

``OUTPUT_DIR/sft/`` is an ordinary SFT run (its own config.yaml, metrics.jsonl, checkpoints/ and final/); the
reward-learning phase then trains in ``OUTPUT_DIR`` from ``OUTPUT_DIR/sft/final``, so its first snapshot (IRFT) or
its initial policy (RFT) is the SFT model. ``OUTPUT_DIR/config.yaml`` records the run as it was given (the base
model, the ``sft_phase`` settings), so the same command or config file continues it. Rerunning with ``resume=true``
continues whichever phase was stopped: a finished SFT phase is never retrained, and it is refused if its settings
are no longer the run's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rewardsft.config import RewardLearningConfig, RunConfig, changed_settings, flatten, sft_phase_config
from rewardsft.errors import ConfigError
from rewardsft.layout import CONFIG_FILE, FINAL, SFT_PHASE_DIR, run_config
from rewardsft.training.run import check_output_dir


def has_sft_phase(config: RunConfig) -> bool:
    return isinstance(config, RewardLearningConfig) and config.sft_phase.epochs > 0


def run_sft_phase(config: RewardLearningConfig) -> RewardLearningConfig:
    """Train (or resume, or reuse) the SFT phase; returns the reward-learning phase's config, which starts from
    its ``final/`` (the run's ``sft/`` folder is its own: the reward phase neither counts nor clears it)."""
    from rewardsft.recipes.sft import train_sft

    out = check_output_dir(config)  # before anything is written, as any run; sft/ counts here
    folder = out / SFT_PHASE_DIR
    # Decided from what is there now, identically on every process; its own start clears sft/ under overwrite,
    # after its data and model have been checked.
    phase = sft_phase_config(config, resume=not config.overwrite and folder.is_dir() and any(folder.iterdir()))
    if not config.overwrite and (folder / CONFIG_FILE).is_file():
        check_same_phase(folder, phase)
    if config.overwrite or not (folder / FINAL).is_dir():
        say(f"sft phase: {config.sft_phase.epochs} pass(es) at lr {config.sft_phase.lr:g} into {folder}")
        train_sft(phase)
    start = (folder / FINAL).resolve()
    say(f"{config.method} phase: from {start}")
    # A local folder now: a hub revision or a GGUF file name of the base does not apply to it.
    model = dataclasses.replace(config.model, name_or_path=str(start), revision=None, gguf_file=None)
    return dataclasses.replace(config, model=model)


@contextmanager
def recorded_as_given(config: RunConfig, given: RunConfig) -> Iterator[None]:
    """While the reward phase runs its ``config.yaml`` names the SFT model it loads; afterwards (finished or
    stopped) the run's own settings are written back, the base model included."""
    try:
        yield
    finally:
        path = Path(config.output_dir) / CONFIG_FILE
        if main_process() and path.is_file():
            path.write_text(given.to_yaml())


def check_same_phase(folder: Path, phase: RunConfig) -> None:
    """A stopped or finished SFT phase continues only under the settings it was started with (defaults filled in,
    so a setting added in a later version does not count as a change)."""
    before, now = flatten(run_config(folder).to_dict()), flatten(phase.to_dict())
    changed = changed_settings(before, now)
    if changed:
        key = changed[0]
        raise ConfigError(
            f"{folder} (the run's SFT phase) was trained with {key}={before.get(key)!r}, but this run now sets "
            f"{now.get(key)!r}: rerun with the settings it was started with, or use another output_dir "
            "(or overwrite=true)"
        )


def main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def say(message: str) -> None:
    if main_process():
        print(message, flush=True)
