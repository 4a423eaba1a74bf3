"""``rewardsft demo toy``: the paper's one-state, three-action example, solved two ways.

The IRL problem (docs/toy.md has the derivation): one state, actions ``0..n-1``, a reference policy π_ref, one
observed action a*. The reward r is learned so that the KL-regularised optimal policy explains the observation,
with an L2 penalty on the reward (modulo the constant π_r cannot see) to keep it finite:

    max_r  log π_r(a*) − (λ/2)·Σ_a (r(a) − r̄)²,    π_r = argmax_π E_π[r] − β·KL(π‖π_ref) ∝ π_ref·exp(r/β).

* :func:`sft_solution`: SFT, max_π log π(a*), puts all mass on a* (the λ → 0 or β → 0 limit).
* :func:`irl_closed_form`: the unique maximiser, from its stationarity condition
  π(a) ∝ π_ref(a)·exp(κ·(1[a=a*] − π(a))), κ = 1/(λβ²), solved exactly with the Lambert W function and a
  bisection on the normaliser (machine precision).
* :func:`irft_iterative`: IRFT's own update (Algorithm 2) on a three-logit policy: stages, each starting with
  π_ref ← snapshot of the policy, then K gradient steps on E_{ỹ~snapshot} ℓ(margin) from
  :func:`rewardsft.losses.irft_loss` (exact expectation over the actions) plus the same penalty on the centred
  implicit reward β·log(π_θ/π_ref), scaled by |ℓ'(0)|·β; run until the stages stop moving. Its fixed point is the
  maximiser above whatever the loss kind, K or step size, so agreement with the closed form is a real check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from rewardsft.losses import IRFTLoss, irft_loss

DEFAULT_PI_REF: tuple[float, ...] = (0.5, 0.3, 0.2)
"""Reference policy of the demo. The observed action is the least likely one, so SFT and π_ref disagree most."""
DEFAULT_OBSERVED = 2
DEFAULT_BETAS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0)
DEFAULT_LAM = 1.0
"""λ of the reward penalty (λ/2)·‖r − r̄‖²."""
DEFAULT_STEPS_PER_STAGE = 5
UNREGULARISED_BETA = 0.5
UNREGULARISED_STAGES: tuple[int, ...] = (1, 3, 10, 30, 100)

Probs = tuple[float, ...]


def _check(pi_ref: Sequence[float], observed: int) -> list[float]:
    p = [float(x) for x in pi_ref]
    if len(p) < 2 or any(not x > 0 for x in p) or abs(sum(p) - 1.0) > 1e-9:
        raise ValueError(f"pi_ref must be at least two positive probabilities summing to 1, got {list(pi_ref)}")
    if not 0 <= observed < len(p):
        raise ValueError(f"observed must be an action index in 0..{len(p) - 1}, got {observed}")
    return [x / sum(p) for x in p]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def sft_solution(pi_ref: Sequence[float], observed: int) -> Probs:
    """argmax_π log π(a*): all probability on the observed action (π_ref plays no part)."""
    p = _check(pi_ref, observed)
    return tuple(1.0 if a == observed else 0.0 for a in range(len(p)))


def irl_policy(pi_ref: Sequence[float], reward: Sequence[float], beta: float) -> Probs:
    """π_r = argmax_π E_π[r] − β·KL(π‖π_ref), i.e. π_r(a) ∝ π_ref(a)·exp(r(a)/β)."""
    _check_positive(beta=beta)
    logits = [math.log(p) + r / beta for p, r in zip(pi_ref, reward, strict=True)]
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return tuple(w / total for w in weights)


def irl_objective(pi_ref: Sequence[float], observed: int, beta: float, reward: Sequence[float], lam: float) -> float:
    """J(r) = log π_r(a*) − (λ/2)·Σ_a (r(a) − r̄)²: the IRL objective the demo maximises."""
    _check(pi_ref, observed)
    mean = sum(reward) / len(reward)
    return math.log(irl_policy(pi_ref, reward, beta)[observed]) - lam / 2 * sum((r - mean) ** 2 for r in reward)


def irl_reward(policy: Sequence[float], observed: int, beta: float, lam: float) -> tuple[float, ...]:
    """The centred reward at the optimum, r(a) = (1[a=a*] − π(a))/(λβ) (stationarity of J)."""
    _check_positive(beta=beta, lam=lam)
    return tuple(((1.0 if a == observed else 0.0) - q) / (lam * beta) for a, q in enumerate(policy))


def _lambert_w_of_exp(log_x: float) -> float:
    """W(e^log_x) for the principal branch, computed in log space (no overflow for large log_x).

    Solves e^v + v = log_x for v = log W by Newton's method from a point right of the root (the function is
    convex and increasing in v, so the iterates decrease monotonically onto the root).
    """
    v = math.log(log_x) if log_x > 1.0 else log_x
    for _ in range(200):
        ev = math.exp(v)
        step = (ev + v - log_x) / (ev + 1.0)
        v -= step
        if abs(step) <= 1e-16 * max(1.0, abs(v)):
            break
    return math.exp(v)


def irl_closed_form(pi_ref: Sequence[float], observed: int, beta: float, lam: float = DEFAULT_LAM) -> Probs:
    """The maximiser of J(r) as a policy π_r, exactly.

    J is strictly concave in the centred reward, so its unique maximiser is the root of ∇J = 0:
    r(a) = (1[a=a*] − π(a))/(λβ), hence π(a) = π_ref(a)·exp(κ(1[a=a*] − π(a)))/Z with κ = 1/(λβ²). Each
    coordinate is π(a) = W(κ·π_ref(a)·e^{κ·1[a=a*]}/Z)/κ (Lambert W), and Σ_a π(a) = 1 fixes Z: the left side
    is strictly decreasing in Z, so bisection on log Z finds it to machine precision.
    """
    p = _check(pi_ref, observed)
    _check_positive(beta=beta, lam=lam)
    kappa = 1.0 / (lam * beta**2)
    log_args = [math.log(kappa) + math.log(q) + (kappa if a == observed else 0.0) for a, q in enumerate(p)]

    def policy(log_z: float) -> list[float]:
        return [_lambert_w_of_exp(x - log_z) / kappa for x in log_args]

    def excess(log_z: float) -> float:
        return sum(policy(log_z)) - 1.0

    lo, hi, width = 0.0, 0.0, 1.0
    while excess(lo) < 0:
        lo, width = lo - width, width * 2
    width = 1.0
    while excess(hi) > 0:
        hi, width = hi + width, width * 2
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    probs = policy(0.5 * (lo + hi))
    total = sum(probs)
    return tuple(q / total for q in probs)


def loss_slope(kind: IRFTLoss) -> float:
    """|ℓ'(0)|: 1/2 for the sigmoid loss, 1 for hinge and linear. It scales IRFT's stage-start gradient."""
    margin = torch.zeros((), dtype=torch.float64, requires_grad=True)
    kind(margin).backward()
    assert margin.grad is not None
    return abs(float(margin.grad))


class IRFTRun(NamedTuple):
    probs: Probs
    """The policy after the last stage."""
    stages: int
    """Stages run."""
    history: tuple[Probs, ...]
    """The policy after each stage (history[t-1] after stage t)."""


def irft_run(
    pi_ref: Sequence[float],
    observed: int,
    beta: float,
    lam: float = DEFAULT_LAM,
    *,
    kind: IRFTLoss = IRFTLoss.SIGMOID,
    steps_per_stage: int = DEFAULT_STEPS_PER_STAGE,
    stages: int | None = None,
    max_stages: int = 20_000,
    tol: float = 1e-11,
) -> IRFTRun:
    """IRFT (Algorithm 2) on a policy with one logit per action, with the reward penalty of the IRL problem.

    Each stage t: snapshot π_t ← π_θ (frozen, detached); generations ỹ ~ π_t, taken as the exact expectation
    (every action, weighted by π_t(ỹ)); ``steps_per_stage`` gradient steps on

        L_t(θ) = Σ_ỹ π_t(ỹ)·ℓ(β[(log π_θ(a*) − log π_θ(ỹ)) − (log π_t(a*) − log π_t(ỹ))])
                 + |ℓ'(0)|·β·(λ/2)·‖r_θ − mean(r_θ)‖²,   r_θ = β·log(π_θ/π_ref)  (π_ref: the initial policy).

    At the start of a stage ∇L_t = −|ℓ'(0)|·β·∇J, so a stage leaves θ in place exactly when θ maximises J:
    the fixed point of the stages is the IRL solution, for any loss kind, K and step size.

    ``stages=None`` runs until no probability moves more than ``tol`` in a stage (RuntimeError after
    ``max_stages``); an integer runs exactly that many stages (with ``lam=0`` that is plain IRFT, whose only
    brake is the finite number of stages).
    """
    p = _check(pi_ref, observed)
    _check_positive(beta=beta, steps_per_stage=steps_per_stage)
    if lam < 0:
        raise ValueError(f"lam must be non-negative, got {lam}")
    if stages is None and lam == 0:
        raise ValueError("with lam = 0 IRFT has no finite fixed point (it drifts to the SFT solution): pass stages")
    slope = loss_slope(kind)
    n = len(p)
    log_pi_ref = torch.tensor(p, dtype=torch.float64).log()
    logits = log_pi_ref.clone().requires_grad_(True)
    # Step size from curvature bounds: within a stage the loss has curvature ≤ β²/2 + |ℓ'(0)|·λβ³; across
    # stages the K steps act like one step on |ℓ'(0)|·β·(−J), whose curvature is ≤ |ℓ'(0)|·β·(1/2 + λβ²).
    lr = 1.0 / (steps_per_stage * slope * beta * (0.5 + lam * beta**2) + beta**2 / 2 + slope * lam * beta**3)
    penalty_weight = slope * beta * lam / 2
    current = torch.softmax(logits.detach(), dim=0)
    history: list[Probs] = []
    limit = max_stages if stages is None else stages
    for _ in range(limit):
        snapshot = torch.log_softmax(logits.detach(), dim=0)  # π_ref ← π_θ for this stage
        weights = snapshot.exp()  # ỹ ~ π_t, as an exact expectation
        for _ in range(steps_per_stage):
            logps = torch.log_softmax(logits, dim=0)
            terms = irft_loss(
                policy_demo_logps=logps[observed].expand(n),
                policy_gen_logps=logps,
                ref_demo_logps=snapshot[observed].expand(n),
                ref_gen_logps=snapshot,
                beta=beta,
                kind=kind,
            )
            reward = beta * (logps - log_pi_ref)
            centred = reward - reward.mean()
            loss = (weights * terms.loss).sum() + penalty_weight * (centred**2).sum()
            (grad,) = torch.autograd.grad(loss, logits)
            with torch.no_grad():
                logits -= lr * grad
        previous, current = current, torch.softmax(logits.detach(), dim=0)
        history.append(tuple(current.tolist()))
        if stages is None and float((current - previous).abs().max()) < tol:
            break
    else:
        if stages is None:
            raise RuntimeError(f"IRFT did not converge in {max_stages} stages (β={beta}, λ={lam})")
    return IRFTRun(probs=history[-1] if history else tuple(p), stages=len(history), history=tuple(history))


def irft_iterative(
    pi_ref: Sequence[float],
    observed: int,
    beta: float,
    lam: float = DEFAULT_LAM,
    *,
    kind: IRFTLoss = IRFTLoss.SIGMOID,
    steps_per_stage: int = DEFAULT_STEPS_PER_STAGE,
    stages: int | None = None,
) -> Probs:
    """The policy IRFT stages reach (see :func:`irft_run`); with ``stages=None``, run to the fixed point."""
    return irft_run(pi_ref, observed, beta, lam, kind=kind, steps_per_stage=steps_per_stage, stages=stages).probs


def toy_rows(
    pi_ref: Sequence[float] = DEFAULT_PI_REF,
    observed: int = DEFAULT_OBSERVED,
    betas: Sequence[float] = DEFAULT_BETAS,
    lam: float = DEFAULT_LAM,
) -> list[dict[str, Any]]:
    """One row per β: π_ref, SFT, the closed form, IRFT's fixed point, their largest difference, stages run."""
    rows = []
    for beta in betas:
        closed = irl_closed_form(pi_ref, observed, beta, lam)
        run = irft_run(pi_ref, observed, beta, lam)
        rows.append(
            {
                "beta": float(beta),
                "pi_ref": tuple(float(x) for x in pi_ref),
                "sft": sft_solution(pi_ref, observed),
                "closed_form": closed,
                "iterative": run.probs,
                "max_abs_diff": max(abs(a - b) for a, b in zip(closed, run.probs, strict=True)),
                "stages": run.stages,
            }
        )
    return rows


def _vec(values: Sequence[float]) -> str:
    return "(" + " ".join(f"{x:.3f}" for x in values) + ")"


def _header(pi_ref: Sequence[float], observed: int, lam: float) -> list[str]:
    return [
        f"IRL toy: one state, actions 0..{len(pi_ref) - 1}, π_ref = {_vec(pi_ref)}, one observed action a* = {observed}.",
        f"Problem: max_r log π_r(a*) − (λ/2)·Σ_a (r(a) − r̄)², λ = {lam:g}, where π_r ∝ π_ref·exp(r/β) maximises "
        "E_π[r] − β·KL(π‖π_ref).",
        "SFT = max_π log π(a*). Closed form: π(a) ∝ π_ref(a)·exp(κ(1[a=a*] − π(a))), κ = 1/(λβ²) (Lambert W, exact).",
        f"IRFT: stages with π_ref ← snapshot, {DEFAULT_STEPS_PER_STAGE} steps each of the sigmoid loss "
        "(exact E over ỹ ~ snapshot)",
        "      + the same penalty on the centred implicit reward β·log(π_θ/π_ref), run to the fixed point.",
    ]


def _format(
    rows: Sequence[dict[str, Any]],
    pi_ref: Sequence[float],
    observed: int,
    lam: float,
    unregularised: dict[int, float] | None = None,
) -> str:
    width = len(_vec(pi_ref))
    cols = ["π_ref", "SFT", "IRL closed form", "IRFT iterative"]
    lines = _header(pi_ref, observed, lam)
    lines.append("")
    lines.append(f"{'β':>5}  " + "  ".join(f"{c:<{width}}" for c in cols) + f"  {'max |Δ|':>8}  {'stages':>6}")
    for row in rows:
        vecs = [row["pi_ref"], row["sft"], row["closed_form"], row["iterative"]]
        lines.append(
            f"{row['beta']:>5g}  "
            + "  ".join(f"{_vec(v):<{width}}" for v in vecs)
            + f"  {row['max_abs_diff']:>8.1e}  {row['stages']:>6}"
        )
    lines.append("")
    lines.append(
        "Larger β (stronger KL to π_ref) stays closer to π_ref; β → 0 approaches SFT. The IRL policy keeps mass"
    )
    lines.append(
        "on the unobserved actions and takes it more from the likelier one (it flattens them relative to π_ref)."
    )
    if unregularised:
        steps = ", ".join(f"T={t}: {q:.4f}" for t, q in unregularised.items())
        lines.append(f"Without the penalty (λ = 0) IRFT has no finite fixed point; β = {UNREGULARISED_BETA:g},")
        lines.append(f"π(a*) after T stages: {steps} → 1 (SFT).")
    return "\n".join(lines)


def _unregularised(pi_ref: Sequence[float], observed: int) -> dict[int, float]:
    run = irft_run(pi_ref, observed, UNREGULARISED_BETA, lam=0.0, stages=max(UNREGULARISED_STAGES))
    return {t: run.history[t - 1][observed] for t in UNREGULARISED_STAGES}


def toy_table(
    pi_ref: Sequence[float] = DEFAULT_PI_REF,
    observed: int = DEFAULT_OBSERVED,
    betas: Sequence[float] = DEFAULT_BETAS,
    lam: float = DEFAULT_LAM,
) -> str:
    """The demo's table as text (computes every row)."""
    return _format(toy_rows(pi_ref, observed, betas, lam), pi_ref, observed, lam)


def run_toy(
    print_fn: Callable[[str], Any] = print,
    *,
    pi_ref: Sequence[float] = DEFAULT_PI_REF,
    observed: int = DEFAULT_OBSERVED,
    betas: Sequence[float] = DEFAULT_BETAS,
    lam: float = DEFAULT_LAM,
) -> dict[str, Any]:
    """Compute and print the toy table; returns its numbers (rows, the λ = 0 drift) and the printed text."""
    rows = toy_rows(pi_ref, observed, betas, lam)
    drift = _unregularised(pi_ref, observed)
    table = _format(rows, pi_ref, observed, lam, drift)
    print_fn(table)
    return {
        "pi_ref": tuple(float(x) for x in pi_ref),
        "observed": observed,
        "lam": lam,
        "rows": rows,
        "unregularised": {"beta": UNREGULARISED_BETA, "pi_observed_after_stages": drift},
        "table": table,
    }
