"""Every IRFT loss raises the implicit-reward margin it is built on, and a sign-flipped loss fails the check.

One stage (SPIN) on the tiny llama model. After training, the final model and the stage's own artefacts
(``generations.jsonl`` and the snapshot's cached log-probs ``ref_logps.rank0.pt``) give the implicit rewards
r(y) = β·(log π(y) − log π_ref(y)) of every pair's demonstration y and generation ỹ, and the margin

    u = r(y) − r(ỹ) = β·[(log π(y) − log π(ỹ)) − (log π_ref(y) − log π_ref(ỹ))].

At the stage start π = π_ref, so u = 0 exactly; a loss that trains the right way ends with u clearly above 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from rewardsft.cli import main
from rewardsft.config import load_config
from rewardsft.data import Renderer, TokenizedExample, load_split
from rewardsft.losses import IRFTLoss, IRFTTerms
from rewardsft.models import load_tokenizer
from rewardsft.reference import Pair, compute_ref_logps
from rewardsft.steps import pairs as pair_step
from rewardsft.training.metrics import read_metrics
from tests.integration.test_irft import irft_args

BETA = 0.1
# 48 pairs, batch 4 (FAST: adamw, lr 2e-3) -> 12 steps per pass; two passes over the stage's pairs at a
# constant lr: 24 steps, about 0.5 s a run.
SETTINGS = ["irft.stages=1", "irft.epochs_per_stage=2", f"irft.beta={BETA}", "optim.schedule=constant"]
CASES = [
    pytest.param("sigmoid", 0.0, id="sigmoid"),
    pytest.param("hinge", 0.0, id="hinge"),
    pytest.param("linear", 0.0, id="linear"),
    pytest.param("sigmoid", 1.0, id="sigmoid+sft"),
    pytest.param("hinge", 1.0, id="hinge+sft"),
]


def run_stage(llama_dir: Path, data: Path, out: Path, loss: str, sft_weight: float) -> list[dict[str, Any]]:
    args = irft_args(llama_dir, data, out, *SETTINGS, f"irft.loss={loss}", f"irft.sft_weight={sft_weight}")
    assert main(args) == 0
    return [r for r in read_metrics(out / "metrics.jsonl") if "irft/loss" in r]


def stage_rewards(llama_dir: Path, data: Path, out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) implicit rewards r(y), r(ỹ) of every pair of stage 1: the final model against the snapshot cache."""
    config = load_config("irft", overrides=irft_args(llama_dir, data, out, *SETTINGS)[2:])
    tokenizer = load_tokenizer(config.model)
    renderer = Renderer(tokenizer, config.data.fallback_template, config.data.system_prompt)
    dc = config.data
    train = load_split(
        dc.path, dc.split, renderer, fmt=dc.format, max_length=dc.max_length, max_prompt_length=dc.max_prompt_length
    )
    by_index = {ex.index: ex for ex in train.tokenized}
    stage = out / "stages" / "stage-1"
    rows = [json.loads(line) for line in (stage / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == len(train.tokenized) == 48
    room = config.data.max_length
    pairs = []
    for row in rows:  # built as steps.stages.stage_pairs builds them, in the order of the snapshot cache
        demo = by_index[row["index"]]
        gen = TokenizedExample(demo.prompt_ids, row["response_ids"][: room - len(demo.prompt_ids)], demo.index)
        pairs.append(Pair(demo, gen))
    pad_id = tokenizer.pad_token_id
    ref = torch.load(stage / "ref_logps.rank0.pt")
    # The pairs really are the run's: the initial model (= the snapshot) reproduces its cache. The cache was
    # computed in batches of 4, this in batches of 8: padding changes the float32 sums by ~1e-6.
    initial = AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32)
    torch.testing.assert_close(compute_ref_logps(initial, pairs, 8, pad_id), ref, rtol=0, atol=1e-4)
    final = AutoModelForCausalLM.from_pretrained(str(out / "final"), dtype=torch.float32)
    rewards = BETA * (compute_ref_logps(final, pairs, 8, pad_id) - ref)
    return rewards[:, 0], rewards[:, 1]


def check_margin_raised(records: list[dict[str, Any]], demo_reward: torch.Tensor, gen_reward: torch.Tensor) -> None:
    """The stage starts at u = 0 and ends with u clearly positive, logged during training and measured after;
    and the generations were not made more likely.

    Observed on this setup (mean u after the stage / share of pairs with u > 0 / mean r(ỹ)):
    sigmoid 1.43 / 1.00 / -0.69, hinge 1.34 / 1.00 / -0.65, linear 1.50 / 1.00 / -0.72,
    sigmoid+sft 1.54 / 1.00 / -0.13, hinge+sft 1.40 / 1.00 / -0.10. Sign-flipped: sigmoid -1.33 / 0.00,
    sigmoid+sft 0.55 / 1.00 / +0.58, hinge+sft 0.10 / 0.79 / +0.65. The r(ỹ) clause is what catches a flipped
    loss under ``sft_weight=1``: the demonstrations' NLL alone raises u (an SFT-only run of the same stage,
    contrastive term zeroed, ends at u = 1.83, r(ỹ) = -0.27), so u > 0 cannot tell the contrastive term's
    sign there, but a flipped term is the only thing that pushes the generations up.
    """
    margins = demo_reward - gen_reward
    logged = [r["irft/margin"] for r in records]
    assert logged[0] == pytest.approx(0.0, abs=1e-5)  # policy == snapshot at the stage start
    last = logged[-len(logged) // 4 :]
    assert sum(last) / len(last) > 0.5, f"logged irft/margin over the last quarter: {last}"
    assert float(margins.mean()) > 0.5, f"mean margin {float(margins.mean()):.3f}"
    assert float((margins > 0).float().mean()) >= 0.9, f"share of pairs with u > 0: {(margins > 0).float().mean()}"
    assert float(gen_reward.mean()) < 0.25, f"mean generation reward {float(gen_reward.mean()):.3f}"
    assert float((gen_reward > 0).float().mean()) < 0.5, f"share of generations made more likely: {gen_reward}"


@pytest.mark.parametrize(("loss", "sft_weight"), CASES)
def test_loss_raises_the_implicit_margin(
    loss: str, sft_weight: float, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    records = run_stage(llama_dir, builtin_jsonl, out, loss, sft_weight)
    check_margin_raised(records, *stage_rewards(llama_dir, builtin_jsonl, out))


def sign_flipped(original: Any) -> Any:
    """``irft_loss`` training on ℓ(−u): demonstration and generation swap roles in the loss only.

    The returned terms still report the true rewards and margin u, so the logged metrics stay comparable.
    """

    def flipped(
        policy_demo: torch.Tensor,
        policy_gen: torch.Tensor,
        ref_demo: torch.Tensor,
        ref_gen: torch.Tensor,
        beta: float,
        kind: IRFTLoss = IRFTLoss.SIGMOID,
    ) -> IRFTTerms:
        swapped = original(policy_gen, policy_demo, ref_gen, ref_demo, beta, kind)
        return IRFTTerms(swapped.loss, swapped.gen_reward, swapped.demo_reward, -swapped.margin)

    return flipped


@pytest.mark.parametrize(("loss", "sft_weight"), CASES)
def test_a_sign_flipped_loss_fails_the_check(
    loss: str,
    sft_weight: float,
    llama_dir: Path,
    builtin_jsonl: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pair_step, "irft_loss", sign_flipped(pair_step.irft_loss))
    out = tmp_path / "run"
    records = run_stage(llama_dir, builtin_jsonl, out, loss, sft_weight)
    demo_reward, gen_reward = stage_rewards(llama_dir, builtin_jsonl, out)
    with pytest.raises(AssertionError):
        check_margin_raised(records, demo_reward, gen_reward)
    if sft_weight == 0:
        assert float((demo_reward - gen_reward).mean()) < -0.5  # the margin went down, not merely up too little
    else:
        assert float(gen_reward.mean()) > 0.25  # the flipped term pushed the generations up
