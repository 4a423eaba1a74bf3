"""The start every recipe shares: validate the data, then open the run and load the policy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rewardsft.config import RunConfig
from rewardsft.data import LoadedSplit, Renderer, load_split
from rewardsft.data.tokenize import verbatim_text_prompt_warning
from rewardsft.layout import render_settings
from rewardsft.models import disable_dropout, load_policy, load_tokenizer
from rewardsft.training.engine import EngineRules
from rewardsft.training.run import Run, check_room


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


def start_recipe(
    config: RunConfig, load_extra: Callable[[Renderer], Any] | None = None, rules: EngineRules | None = None
) -> RecipeStart:
    """Check the config, load and validate every row, then create the output dir and load the policy.

    The data (and whatever ``load_extra`` loads, e.g. RFT's preference pairs) is validated before anything is
    written, so bad input never leaves a half-made run behind. ``rules``: what the method adds to the engine's
    own rules (checked as the run opens).
    """
    run = Run(config, rules)
    tokenizer = load_tokenizer(config.model)
    renderer = Renderer.from_settings(tokenizer, render_settings(config.data))
    train_data, eval_data = load_data(config, renderer)
    extra = load_extra(renderer) if load_extra is not None else None
    run.begin()
    run.print(f"train data {train_data.source}: {train_data.stats.summary()}")
    warning = verbatim_text_prompt_warning(train_data.examples, renderer)
    if warning:
        run.print(warning)
    lora = config.lora if config.train.dropout else dataclasses.replace(config.lora, dropout=0.0)
    model = load_policy(config.model, lora, run.device, run.checkpoint)
    # RFT's reward model starts from the policy (or a model of its size): count it twice there.
    check_room(run.output_dir, [model] * (2 if config.method == "rft" else 1), config.optim.name, run.engine)
    set_dropout(model, config, run)
    model.train()
    return RecipeStart(run, tokenizer, renderer, train_data, eval_data, model, extra)


def set_dropout(model: Any, config: RunConfig, run: Run) -> None:
    """Switch every dropout off unless ``train.dropout``; warn when a reward-learning recipe keeps it."""
    if not config.train.dropout:
        disable_dropout(model)
    elif config.method in ("irft", "rft"):
        run.print(
            f"warning: train.dropout=true: {config.method.upper()}'s policy differs from its snapshot at a stage "
            "start and two forwards of one sequence disagree; the paper's code and TRL switch dropout off"
        )


def load_data(config: RunConfig, renderer: Renderer) -> tuple[LoadedSplit, LoadedSplit | None]:
    """The training split and, when configured, the held-out split; all rows validated up front."""
    dc = config.data
    common: dict[str, Any] = {"fmt": dc.format, "max_length": dc.max_length, "max_prompt_length": dc.max_prompt_length}
    train = load_split(dc.path, dc.split, renderer, max_rows=dc.max_rows, **common)
    if dc.eval_path is None and dc.eval_split is None:
        return train, None
    evaluation = load_split(dc.eval_path or dc.path, dc.eval_split or dc.split, renderer, **common)
    return train, evaluation
