"""``python -m tests.reliability.slow_phases ARGS`` = ``rewardsft ARGS`` with its short phases stretched, so that
random kills land in them too, and each phase recorded in ``$REWARDSFT_PHASE_FILE`` for the harness to read.

Stretched (a sleep, nothing else changes, so results equal an unstretched run's): every generation batch; a
checkpoint after its weights are written and before its training state (the folder is incomplete then); a stage's
generations file after it is fully written and before it is renamed into place.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

PHASE_FILE = Path(os.environ.get("REWARDSFT_PHASE_FILE", os.devnull))


def mark(phase: str) -> None:
    PHASE_FILE.write_text(phase)


def stretch(owner: Any, name: str, phase: str, delay: float) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(phase)
        time.sleep(delay)
        try:
            return original(*args, **kwargs)
        finally:
            mark("training")

    setattr(owner, name, wrapper)


def install() -> None:
    from rewardsft import generation
    from rewardsft.recipes import common
    from rewardsft.steps import stages
    from rewardsft.training import checkpoint

    started = common.start_recipe

    @functools.wraps(started)
    def start_recipe(*args: Any, **kwargs: Any) -> Any:
        out = started(*args, **kwargs)
        mark("training")  # data validated, run folder written, model loaded
        return out

    common.start_recipe = start_recipe
    for recipe in ("sft", "irft", "rft"):
        module = __import__(f"rewardsft.recipes.{recipe}", fromlist=["start_recipe"])
        module.start_recipe = start_recipe  # type: ignore[attr-defined]
    stretch(generation, "_generate_batch", "generation", 0.2)
    stretch(checkpoint, "write_training_state", "checkpoint write", 0.3)
    original_replace = Path.replace

    def slow_replace(self: Path, target: Any) -> Any:
        if Path(target).name == "generations.jsonl":
            mark("stage cache write")
            time.sleep(0.5)
        return original_replace(self, target)

    irft_write = stages.write_generations

    @functools.wraps(irft_write)
    def write_generations(*args: Any, **kwargs: Any) -> Any:
        Path.replace = slow_replace  # type: ignore[method-assign]
        try:
            return irft_write(*args, **kwargs)
        finally:
            Path.replace = original_replace  # type: ignore[method-assign]
            mark("training")

    stages.write_generations = write_generations


if __name__ == "__main__":
    mark("startup")
    install()
    from rewardsft.cli import main

    sys.exit(main(sys.argv[1:]))
