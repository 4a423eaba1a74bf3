"""A time estimate before the study starts: one short SFT run and one batch of samples, timed on this machine,
scaled to every planned run by its steps and generated tokens. Rough by design (a run's steps differ in length,
generation slows as batches grow); the progress line rescales it by how the finished runs compared.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rewardsft.config import IRFTConfig, RewardLearningConfig, RFTConfig, RunConfig
from rewardsft.layout import FINAL, METRICS_FILE
from rewardsft.studies.plan import Trial, budget_of

if TYPE_CHECKING:
    from rewardsft.studies.runner import Study

CALIBRATION = "calibration"
CALIBRATION_STEPS = 3
PAIR_STEP = 2.2
"""An IRFT step (demonstration and generation forward/backward, plus the snapshot pass) in SFT steps."""
EVAL_SHARE = 0.35
"""A no-grad forward of a batch, in SFT steps (forward only, no optimiser)."""


@dataclass(frozen=True)
class UnitCosts:
    step_s: float
    """One SFT optimiser step at the study's batch size."""
    load_s: float
    """A run's fixed cost: loading, tokenising, saving ``final/``."""
    decode_s: float
    """One decoding step of a generation batch."""


def calibrate(study: Study) -> UnitCosts:
    """Time (once; read back from ``DIR/calibration/cost.json`` afterwards) a short SFT run and a sample batch."""
    folder = study.out / CALIBRATION
    record = folder / "cost.json"
    if record.is_file():
        return UnitCosts(**json.loads(record.read_text()))
    from rewardsft.recipes import run_recipe

    config = copy.deepcopy(study.config(Trial(study.specs[0], study.settings.lrs[0], 1, seed=0)))
    config.output_dir, config.overwrite, config.train.max_steps = str(folder / "run"), True, CALIBRATION_STEPS
    from rewardsft.studies.runner import logged_to

    began = time.time()
    with logged_to(folder / "run.log"):
        run_recipe(config)
    total = time.time() - began
    steps = [json.loads(line).get("time/step_s") for line in (folder / "run" / METRICS_FILE).read_text().splitlines()]
    timed = [s for s in steps[1:] if s is not None] or [s for s in steps if s is not None]
    step_s = sum(timed) / len(timed)
    with logged_to(folder / "run.log"):
        decode_s = decode_step(study, folder / "run" / FINAL)
    costs = UnitCosts(step_s, max(total - step_s * CALIBRATION_STEPS, 0.0), decode_s)
    record.write_text(json.dumps(asdict(costs), indent=2))
    return costs


def decode_step(study: Study, model: Path) -> float:
    """Seconds per decoding step of one generation batch (at most 8 prompts, the study's sampling settings)."""
    from rewardsft.data import load_examples
    from rewardsft.generation import sample_responses
    from rewardsft.layout import rendering_for

    examples, _ = load_examples(study.split.file("train"), "train")
    prompts = [ex.prompt for ex in examples[:8]]
    began = time.time()
    responses = sample_responses(rendering_for(model), prompts, study.sampling(), seed=0)
    longest = max((r.tokens for r in responses), default=1)
    return (time.time() - began) / max(longest, 1)


def run_seconds(config: RunConfig, n_train: int, pairs: int, costs: UnitCosts) -> float:
    """Estimated seconds of one run and its gap evaluation on ``pairs`` pairs."""
    budget = budget_of(config, n_train)
    tc = config.train
    generation_batches = 0.0
    if isinstance(config, IRFTConfig):
        train_s = budget.steps * PAIR_STEP * costs.step_s
        generation_batches = math.ceil(budget.demonstrations / config.generation.batch_size)
    elif isinstance(config, RFTConfig):
        rc = config.rft
        samples = rc.iterations * rc.prompts_per_iteration * rc.samples_per_prompt
        generation_batches = math.ceil(samples / config.generation.batch_size)
        sequences = rc.iterations * rc.prompts_per_iteration * (rc.samples_per_prompt + 1)
        train_s = (rc.reward_steps + rc.policy_steps) * sequences / tc.batch_size * costs.step_s
    else:
        train_s = budget.steps * costs.step_s
    decode_s = 0.0
    if isinstance(config, RewardLearningConfig):
        decode_s = generation_batches * config.generation.max_new_tokens * costs.decode_s
    eval_s = 2 * pairs / tc.batch_size * EVAL_SHARE * costs.step_s + costs.load_s
    return costs.load_s + train_s + decode_s + eval_s


def estimate_runs(study: Study, trials: list[Trial]) -> dict[str, float]:
    """Seconds per planned trial (by name)."""
    if not trials:
        return {}
    costs = calibrate(study)
    pairs = study.split.counts["dev"]
    out = {}
    for trial in trials:
        # A from-SFT run's start does not exist yet; its cost does not depend on it.
        probe = replace(trial, spec=replace(trial.spec, from_sft=False))
        out[trial.name] = run_seconds(study.config(probe), study.n_train, pairs, costs)
    return out
