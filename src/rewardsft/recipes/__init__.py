"""The three recipes (SFT, IRFT, RFT); :func:`run_recipe` is the one entry the CLI and the Python API share."""

from __future__ import annotations

from pathlib import Path

from rewardsft.config import IRFTConfig, RewardLearningConfig, RFTConfig, RunConfig


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
            assert isinstance(config, RewardLearningConfig)  # has_sft_phase says so
            reward_phase = run_sft_phase(config)
            with recorded_as_given(reward_phase, config):
                return _dispatch(reward_phase)
    finally:
        end_process_group()


def _dispatch(config: RunConfig) -> Path:
    if isinstance(config, IRFTConfig):
        from rewardsft.recipes.irft import train_irft

        return train_irft(config)
    if isinstance(config, RFTConfig):
        from rewardsft.recipes.rft import train_rft

        return train_rft(config)
    from rewardsft.recipes.sft import train_sft

    return train_sft(config)
