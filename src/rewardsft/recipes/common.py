"""The start every recipe shares: validate the data, then open the run and load the policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rewardsft.config import RunConfig
from rewardsft.data import LoadedSplit, Renderer, load_split
from rewardsft.models import load_policy, load_tokenizer
from rewardsft.training.run import Run


@dataclass
class RecipeStart:
    run: Run
    tokenizer: Any
    renderer: Renderer
    train_data: LoadedSplit
    eval_data: LoadedSplit | None
    model: Any
    """The policy in train mode (from the newest checkpoint when resuming), not yet prepared."""
    extra: Any = None
    """What the recipe's ``load_extra`` returned."""


def start_recipe(config: RunConfig, load_extra: Callable[[Renderer], Any] | None = None) -> RecipeStart:
    """Check the config, load and validate every row, then create the output dir and load the policy.

    The data (and whatever ``load_extra`` loads, e.g. RFT's preference pairs) is validated before anything is
    written, so bad input never leaves a half-made run behind.
    """
    run = Run(config)
    tokenizer = load_tokenizer(config.model)
    renderer = Renderer(tokenizer, config.data.fallback_template, config.data.system_prompt)
    train_data, eval_data = load_data(config, renderer)
    extra = load_extra(renderer) if load_extra is not None else None
    run.begin()
    run.print(f"train data {train_data.source}: {train_data.stats.summary()}")
    model = load_policy(config.model, config.lora, run.device, run.checkpoint)
    model.train()
    return RecipeStart(run, tokenizer, renderer, train_data, eval_data, model, extra)


def load_data(config: RunConfig, renderer: Renderer) -> tuple[LoadedSplit, LoadedSplit | None]:
    """The training split and, when configured, the held-out split; all rows validated up front."""
    dc = config.data
    common: dict[str, Any] = {"fmt": dc.format, "max_length": dc.max_length, "max_prompt_length": dc.max_prompt_length}
    train = load_split(dc.path, dc.split, renderer, max_rows=dc.max_rows, **common)
    if dc.eval_path is None and dc.eval_split is None:
        return train, None
    evaluation = load_split(dc.eval_path or dc.path, dc.eval_split or dc.split, renderer, **common)
    return train, evaluation


def eval_batch(config: RunConfig) -> int:
    return config.train.eval_batch_size or config.train.batch_size
