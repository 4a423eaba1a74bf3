"""The one-state toy (`rewardsft demo toy`): SFT vs the regularised IRL solution, closed form vs IRFT stages."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from rewardsft.demo.toy import (
    DEFAULT_BETAS,
    DEFAULT_LAM,
    DEFAULT_OBSERVED,
    DEFAULT_PI_REF,
    irft_iterative,
    irft_run,
    irl_closed_form,
    irl_objective,
    irl_policy,
    irl_reward,
    loss_slope,
    run_toy,
    sft_solution,
    toy_table,
)
from rewardsft.losses import IRFTLoss

P, A = DEFAULT_PI_REF, DEFAULT_OBSERVED


def centred_log_ratio_norm(policy: tuple[float, ...], pi_ref: tuple[float, ...]) -> float:
    """‖log(π/π_ref) − mean‖: the distance to π_ref that the penalty controls (r = β·log(π/π_ref) + const)."""
    logs = [math.log(q / p) for q, p in zip(policy, pi_ref, strict=True)]
    mean = sum(logs) / len(logs)
    return math.sqrt(sum((x - mean) ** 2 for x in logs))


def test_sft_is_one_hot_on_the_observed_action() -> None:
    assert sft_solution(P, A) == (0.0, 0.0, 1.0)
    assert sft_solution((0.25, 0.25, 0.25, 0.25), 0) == (1.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("beta", DEFAULT_BETAS)
def test_closed_form_and_irft_stages_agree(beta: float) -> None:
    closed = irl_closed_form(P, A, beta, DEFAULT_LAM)
    run = irft_run(P, A, beta, DEFAULT_LAM, kind=IRFTLoss.SIGMOID)
    assert run.stages > 5  # it took many snapshot stages, not one step, to get there
    assert max(abs(c - i) for c, i in zip(closed, run.probs, strict=True)) < 1e-3
    assert math.isclose(sum(run.probs), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize(("kind", "steps"), [("sigmoid", 1), ("sigmoid", 20), ("hinge", 5), ("linear", 5)])
def test_irft_fixed_point_does_not_depend_on_loss_kind_or_steps_per_stage(kind: str, steps: int) -> None:
    closed = irl_closed_form(P, A, 0.5, DEFAULT_LAM)
    got = irft_iterative(P, A, 0.5, DEFAULT_LAM, kind=IRFTLoss(kind), steps_per_stage=steps)
    assert max(abs(c - i) for c, i in zip(closed, got, strict=True)) < 1e-3


def test_loss_slopes_at_zero() -> None:
    assert loss_slope(IRFTLoss.SIGMOID) == pytest.approx(0.5)
    assert loss_slope(IRFTLoss.HINGE) == pytest.approx(1.0)
    assert loss_slope(IRFTLoss.LINEAR) == pytest.approx(1.0)


def test_agreement_on_another_problem() -> None:
    """Four actions, the most likely one observed, another λ."""
    pi_ref, observed, lam = (0.1, 0.4, 0.2, 0.3), 1, 0.5
    for beta in (0.3, 1.5):
        closed = irl_closed_form(pi_ref, observed, beta, lam)
        got = irft_iterative(pi_ref, observed, beta, lam)
        assert max(abs(c - i) for c, i in zip(closed, got, strict=True)) < 1e-3


@pytest.mark.parametrize("beta", DEFAULT_BETAS)
def test_closed_form_is_the_maximiser_of_the_irl_objective(beta: float) -> None:
    policy = irl_closed_form(P, A, beta, DEFAULT_LAM)
    reward = irl_reward(policy, A, beta, DEFAULT_LAM)
    # Stationarity: the optimal reward's KL-regularised policy is the policy itself.
    assert max(abs(a - b) for a, b in zip(irl_policy(P, reward, beta), policy, strict=True)) < 1e-12
    best = irl_objective(P, A, beta, reward, DEFAULT_LAM)
    assert best > irl_objective(P, A, beta, (0.0, 0.0, 0.0), DEFAULT_LAM)
    rng = random.Random(0)
    for scale in (1e-3, 1e-1, 1.0):
        for _ in range(20):
            other = [r + scale * rng.gauss(0, 1) for r in reward]
            assert irl_objective(P, A, beta, other, DEFAULT_LAM) < best
    # The objective ignores a constant added to the reward.
    shifted = [r + 3.0 for r in reward]
    assert irl_objective(P, A, beta, shifted, DEFAULT_LAM) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("beta", DEFAULT_BETAS)
def test_irl_moves_towards_the_observation_but_not_all_the_way(beta: float) -> None:
    policy = irl_closed_form(P, A, beta, DEFAULT_LAM)
    assert P[A] < policy[A] < 1.0
    assert all(q > 0 for q in policy)


@pytest.mark.parametrize("beta", DEFAULT_BETAS)
def test_irl_flattens_the_unobserved_actions(beta: float) -> None:
    """π(0)/π(1) lies in (1, π_ref(0)/π_ref(1)): order kept, the likelier unobserved action loses more."""
    policy = irl_closed_form(P, A, beta, DEFAULT_LAM)
    assert 1.0 < policy[0] / policy[1] < P[0] / P[1]


def test_larger_beta_stays_closer_to_the_reference() -> None:
    betas = sorted([*DEFAULT_BETAS, 0.05, 5.0])
    policies = [irl_closed_form(P, A, b, DEFAULT_LAM) for b in betas]
    observed_mass = [q[A] for q in policies]
    distances = [centred_log_ratio_norm(q, P) for q in policies]
    assert all(a > b for a, b in itertools.pairwise(observed_mass))
    assert all(a > b for a, b in itertools.pairwise(distances))
    # The limits: β → 0 is SFT, β → ∞ is π_ref.
    assert irl_closed_form(P, A, 0.02, DEFAULT_LAM)[A] > 0.99
    assert max(abs(q - p) for q, p in zip(irl_closed_form(P, A, 50.0, DEFAULT_LAM), P, strict=True)) < 1e-3


def test_irft_without_the_penalty_drifts_to_sft() -> None:
    run = irft_run(P, A, 0.5, lam=0.0, stages=100)
    mass = [q[A] for q in run.history]
    assert run.stages == 100
    assert all(a < b for a, b in itertools.pairwise(mass))
    assert mass[-1] > 0.99
    with pytest.raises(ValueError, match="no finite fixed point"):
        irft_run(P, A, 0.5, lam=0.0)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="pi_ref"):
        irl_closed_form((0.5, 0.6, -0.1), 0, 1.0)
    with pytest.raises(ValueError, match="observed"):
        sft_solution(P, 3)
    with pytest.raises(ValueError, match="beta"):
        irl_closed_form(P, A, 0.0)


def test_table_prints() -> None:
    printed: list[str] = []
    result = run_toy(print_fn=printed.append)
    assert len(printed) == 1
    text = printed[0]
    assert text == result["table"]
    assert "max_r log π_r(a*)" in text
    for column in ("π_ref", "SFT", "IRL closed form", "IRFT iterative", "max |Δ|"):
        assert column in text
    assert len(result["rows"]) == len(DEFAULT_BETAS)
    for row, beta in zip(result["rows"], DEFAULT_BETAS, strict=True):
        assert row["beta"] == beta
        assert row["max_abs_diff"] < 1e-3
        assert f"{beta:>5g}  (0.500 0.300 0.200)  (0.000 0.000 1.000)" in text
    assert result["unregularised"]["pi_observed_after_stages"][100] > 0.99
    assert toy_table(betas=(1.0,)).count("\n    1  ") == 1
