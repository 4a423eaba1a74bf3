"""The overfit warning replayed on the logged metrics of the real-data study's IRFT runs (docs/results.md): it must
fire on the runs whose samples collapsed and stay silent on the healthy ones.

Outcomes (SmolLM2-135M-Instruct, 128 human tweets or Amazon review snippets, docs/results.md): "collapsed" runs
ended with a held-out gap per token resolved worse than SFT's and degenerate samples (far shorter than the
demonstrations, or the least diverse of the study); "healthy" ones did not.
The files hold each run's logged ``irft/stage``, ``irft/loss``, ``irft/accuracy``, ``irft/margin``,
``irft/demo_reward`` and ``irft/gen_reward`` per step (log_every=1) and its ``irft.beta``.
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
    "tweets-spin-lr1e-6-s0": "healthy",  # SPIN, lr 1e-6: moved little, samples intact
    "tweets-spin-beta1-s0": "healthy",  # SPIN, β = 1: the loss saturated at once (stalled), samples intact
    "tweets-spin-sftw1-s0": "healthy",  # SPIN, lr 1e-5 + sft_weight 1: gap better than SFT, samples intact
    # Runs that finished after the threshold was fixed (out-of-sample checks of the rule):
    "tweets-spin-from-sft-s0": "healthy",  # SPIN from the SFT model, lr 1e-5: the best gap of the sweep
    "tweets-spin-s1": "collapsed",  # SPIN, lr 1e-5, seed 1: samples 11 tokens, gap/token worse than SFT
    "tweets-irft-t4-s1": "healthy",  # IRFT T=4, lr 1e-5, seed 1: gap better than SFT, samples ~30 tokens
    "amazon-spin-s0": "collapsed",  # reviews, SPIN, lr 1e-5: samples 11 tokens, gap/token worse than SFT
    "amazon-irft-t2-s0": "healthy",  # reviews, IRFT T=2: gap better than SFT
    "amazon-irft-t4-s0": "healthy",  # reviews, IRFT T=4: gap better than SFT
    "amazon-spin-s1": "collapsed",  # reviews, SPIN seed 1: distinct-1 0.40 (SFT 0.60), gap/token worse than SFT
    "amazon-irft-t4-s1": "healthy",  # reviews, IRFT T=4 seed 1: gap better than SFT
}


def warned(records: list[dict[str, float]]) -> bool:
    """Would the recipe have warned? Replays ``overfitting`` stage by stage, as ``train_irft`` calls it."""
    last = max(int(r["irft/stage"]) for r in records)
    return any(overfitting(r, r["beta"], last_stage=int(r["irft/stage"]) == last) for r in records)


@pytest.mark.parametrize(("run", "outcome"), sorted(OUTCOMES.items()))
def test_the_overfit_warning_fires_on_collapsed_runs_only(run: str, outcome: str) -> None:
    records = [json.loads(line) for line in (ASSETS / f"{run}.jsonl").read_text().splitlines()]
    assert warned(records) == (outcome == "collapsed")


def test_every_asset_has_an_outcome() -> None:
    assert {p.stem for p in ASSETS.glob("*.jsonl")} == set(OUTCOMES)


def test_a_first_stage_over_shoot_is_not_warned_because_the_next_stage_corrects_it() -> None:
    """IRFT T=2's first stage pushed its samples down by 98 nats (more than the collapsed SPIN), its second stage
    regenerated (samples 43 -> 16 tokens) and the final model was healthy: the rule reads the last stage only."""
    records = [json.loads(line) for line in (ASSETS / "tweets-irft-t2-s0.jsonl").read_text().splitlines()]
    first = [r for r in records if r["irft/stage"] == 1]
    assert any(overfitting(r, r["beta"], last_stage=True) for r in first)
    assert not any(overfitting(r, r["beta"], last_stage=False) for r in first)
