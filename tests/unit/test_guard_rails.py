"""The overfit warning replayed on the logged metrics of the real-data study's IRFT runs (docs/results.md): it must
fire on the runs whose samples collapsed and stay silent on the healthy ones.

Outcomes (SmolLM2-135M-Instruct, 128 human tweets, docs/results.md): "collapsed" runs ended with samples far
shorter than the demonstrations and a held-out gap per token resolved worse than SFT's; "healthy" ones did not.
The files hold each run's logged ``irft/stage``, ``irft/loss`` and ``irft/accuracy`` per step (log_every=1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardsft.recipes.irft import overfitting

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "study_metrics"
OUTCOMES = {
    "tweets-spin-s0": "collapsed",  # SPIN, lr 1e-5: samples 6 tokens, gap/token worse than SFT
    "tweets-irft-t2-s0": "healthy",  # IRFT T=2, lr 1e-5: gap better than SFT, samples ~22 tokens
    "tweets-irft-t4-s0": "healthy",  # IRFT T=4, lr 1e-5: gap better than SFT, samples ~19 tokens
    "tweets-spin-lr5e-7-s0": "healthy",  # SPIN at the paper's lr: barely moved from the base, samples intact
}


def warned(records: list[dict[str, float]]) -> bool:
    """Would the recipe have warned? Replays ``overfitting`` stage by stage, as ``train_irft`` calls it."""
    stages = sorted({int(r["irft/stage"]) for r in records})
    for stage in stages:
        rows = [r for r in records if int(r["irft/stage"]) == stage]
        for step_in_stage, row in enumerate(rows):
            if overfitting(row, step_in_stage, len(rows), last_stage=stage == stages[-1]):
                return True
    return False


@pytest.mark.parametrize(("run", "outcome"), sorted(OUTCOMES.items()))
def test_the_overfit_warning_fires_on_collapsed_runs_only(run: str, outcome: str) -> None:
    records = [json.loads(line) for line in (ASSETS / f"{run}.jsonl").read_text().splitlines()]
    assert warned(records) == (outcome == "collapsed")


def test_every_asset_has_an_outcome() -> None:
    assert {p.stem for p in ASSETS.glob("*.jsonl")} == set(OUTCOMES)


def test_the_old_rule_fired_on_a_healthy_run() -> None:
    """Why the rule looks at the last stage only: the loss fell below 0.05 early in IRFT T=2's first stage too,
    and its second stage corrected the over-shoot (samples 43 -> 16 tokens, then a healthy final model)."""
    records = [json.loads(line) for line in (ASSETS / "tweets-irft-t2-s0.jsonl").read_text().splitlines()]
    first = [r for r in records if r["irft/stage"] == 1]
    assert any(overfitting(r, i, len(first), last_stage=True) for i, r in enumerate(first))
