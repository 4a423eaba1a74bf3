"""Judges for win rates: a reward model (dir or hub id, including those `rewardsft train rft` saves) or a
Python callable ``module:function(prompt, response) -> float`` for programmatic rewards."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rewardsft.data.formats import Prompt
from rewardsft.errors import ConfigError
from rewardsft.layout import Rendering

Judge = Callable[[list[tuple[Prompt, str]]], list[float]]


def is_callable_spec(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists()


def load_judge(spec: str, rendering: Rendering | None = None) -> Judge:
    """``path/or/hub-id`` -> reward-model judge (rendered by ``rendering`` when given); ``package.module:function``
    -> callable judge."""
    if is_callable_spec(spec):
        return callable_judge(spec)
    from rewardsft.scoring import RewardScorer

    scorer = RewardScorer(rendering or spec)
    return scorer.score


def callable_judge(spec: str) -> Judge:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"judge {spec!r}: cannot import module {module_name!r} ({err})") from None
    function: Any = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"judge {spec!r}: {module_name!r} has no callable {attr!r}")

    def judge(pairs: list[tuple[Prompt, str]]) -> list[float]:
        return [float(function(prompt, response)) for prompt, response in pairs]

    return judge
