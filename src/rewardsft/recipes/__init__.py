"""The three recipes (SFT, IRFT, RFT); :func:`run_recipe` is the one entry the CLI and the Python API share."""

from __future__ import annotations

from pathlib import Path

from rewardsft.config import RunConfig


def run_recipe(config: RunConfig) -> Path:
    """Train with the recipe named by ``config.method``; returns the run's ``final/`` folder.

    IRFT and RFT with ``sft_phase.epochs`` > 0 train an SFT phase first (:mod:`rewardsft.recipes.phases`).
    SIGTERM / SIGINT during the run stop it after the current step with a checkpoint
    (:mod:`rewardsft.training.signals`; raises ``Preempted``).
    """
    from rewardsft.recipes.phases import has_sft_phase, recorded_as_given, run_sft_phase
    from rewardsft.training.run import end_process_group
    from rewardsft.training.signals import STOP

    try:
        with STOP.installed():
            if not has_sft_phase(config):
                return _dispatch(config)
            reward_phase = run_sft_phase(config)
            with recorded_as_given(reward_phase, config):
                return _dispatch(reward_phase)
    finally:
        end_process_group()


def _dispatch(config: RunConfig) -> Path:
    if config.method == "sft":
        from rewardsft.recipes.sft import train_sft

        return train_sft(config)
    if config.method == "irft":
        from rewardsft.recipes.irft import train_irft

        return train_irft(config)
    from rewardsft.recipes.rft import train_rft

    return train_rft(config)
