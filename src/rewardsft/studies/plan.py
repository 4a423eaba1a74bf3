"""The study's grid, as data: which methods, which tries each gets, and the budget every run spends.

Two arms, as in docs/study.md:

- **from the base**: SFT (the baseline) and every reward-learning method named without ``-from-sft``, each tuned
  over the same ``lrs x passes`` grid on the dev part;
- **from SFT** (the paper's protocol): ``spin-from-sft``, ``irft-t4-from-sft``, ... start from the tuned SFT model
  of the same seed and run ``budget`` further passes; each is tuned over ``lrs`` and has a **budget-matched
  control**: the same SFT model trained on by SFT for exactly the same demonstrations and optimiser steps, tuned
  over the same ``lrs``.

Everything here is pure: the runner (:mod:`rewardsft.studies.runner`) turns a :class:`Trial` into a run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rewardsft.config import IRFTConfig, RFTConfig, RunConfig
from rewardsft.errors import ConfigError
from rewardsft.training.batches import plan_steps, total_steps

FROM_SFT = "-from-sft"
CONTROL = "sft-continued"
METHOD_NAMES = "sft, spin, irft-tN (N stages, e.g. irft-t4), rft, and each of those but sft with -from-sft"


@dataclass(frozen=True)
class MethodSpec:
    """One method of the study: the recipe it trains with and the settings that make it this method."""

    name: str
    """As the user names it (``irft-t4-from-sft``), or ``sft-continued-bB-nS`` for a control."""
    method: str
    """The recipe: ``sft``, ``irft`` or ``rft``."""
    overrides: tuple[str, ...] = ()
    from_sft: bool = False
    """Starts from the tuned SFT model of the same seed (else from the base model)."""
    controls: tuple[str, ...] = ()
    """For a budget-matched control: the from-SFT methods whose budget it matches (several when they spend the
    same); empty for every other method."""
    matched: str = ""
    """For a control: how its budget compares with the method's (``exact``, or the closest it could get)."""

    @property
    def is_control(self) -> bool:
        return bool(self.controls)

    @property
    def tuned_over_passes(self) -> bool:
        """From-base methods tune ``passes``; a from-SFT run's length is the study's fixed ``budget``."""
        return not self.from_sft


def parse_method(name: str) -> MethodSpec:
    """``spin``, ``irft-t4``, ``rft``, ``sft`` or any of those but ``sft`` with ``-from-sft``; else ConfigError."""
    base, from_sft = (name[: -len(FROM_SFT)], True) if name.endswith(FROM_SFT) else (name, False)
    stages = re.fullmatch(r"irft-t(\d+)", base)
    if base == "sft" and not from_sft:
        return MethodSpec("sft", "sft")
    if base == "spin":
        return MethodSpec(name, "irft", ("irft.stages=1",), from_sft)
    if stages and int(stages.group(1)) > 0:
        return MethodSpec(name, "irft", (f"irft.stages={int(stages.group(1))}",), from_sft)
    if base == "rft":
        return MethodSpec(name, "rft", (), from_sft)
    raise ConfigError(f"unknown study method {name!r}; choose from {METHOD_NAMES}")


def parse_methods(names: Sequence[str]) -> list[MethodSpec]:
    """SFT first (always: it is the baseline), then the named methods in the order given, each once."""
    specs = [parse_method("sft")]
    for name in dict.fromkeys(names):
        spec = parse_method(name)
        if spec.name != "sft":
            specs.append(spec)
    if len(specs) == 1:
        raise ConfigError(f"--methods names no reward-learning method to compare with SFT; choose from {METHOD_NAMES}")
    return specs


@dataclass(frozen=True)
class Budget:
    """What a run spends: demonstrations seen (with repeats) and optimiser steps."""

    demonstrations: int
    steps: int

    def __str__(self) -> str:
        return f"{self.demonstrations} demonstrations, {self.steps} steps"


def sft_budget(n_examples: int, batch_size: int, grad_accum: int, epochs: int, max_steps: int | None) -> Budget:
    """SFT's budget on one process, counted from the very step plan the recipe follows."""
    steps = total_steps(n_examples, batch_size, grad_accum, 1, epochs, max_steps)
    plan = plan_steps(n_examples, batch_size=batch_size, grad_accum=grad_accum, n_steps=steps, seed=0)
    return Budget(sum(len(m) for s in plan for m in s.micro_batches), steps)


def budget_of(config: RunConfig, n_examples: int) -> Budget:
    """The budget ``config`` spends on ``n_examples`` demonstrations (one process; the study runs one)."""
    tc = config.train
    rows = min(n_examples, config.data.max_rows) if config.data.max_rows is not None else n_examples
    if config.method == "sft":
        return sft_budget(rows, tc.batch_size, tc.grad_accum, tc.epochs, tc.max_steps)
    if isinstance(config, IRFTConfig):
        from rewardsft.steps.stages import plan_stages

        seen = steps = 0
        for stage in plan_stages(rows, config, 1):
            part = sft_budget(len(stage.example_ids), tc.batch_size, tc.grad_accum, 1, stage.steps)
            seen, steps = seen + part.demonstrations, steps + part.steps
        return Budget(seen, steps)
    assert isinstance(config, RFTConfig)
    rc = config.rft
    return Budget(rc.iterations * rc.prompts_per_iteration, rc.iterations * rc.policy_steps)


@dataclass(frozen=True)
class ControlShape:
    """The SFT run that spends a given budget: its micro-batch size and step count."""

    batch_size: int
    max_steps: int
    budget: Budget
    target: Budget
    exact: bool
    """False when no batch size spends exactly the target's demonstrations in its steps (then the closest)."""


def matched_control(target: Budget, n_examples: int, batch_size: int) -> ControlShape:
    """SFT with ``max_steps = target.steps`` and the batch size (nearest ``batch_size`` first) that makes it see
    exactly ``target.demonstrations`` demonstrations; the closest when none does."""
    best: ControlShape | None = None
    candidates = sorted(range(1, max(n_examples, batch_size) + 1), key=lambda b: (abs(b - batch_size), b))
    for size in candidates:
        budget = sft_budget(n_examples, size, 1, 1, target.steps)
        shape = ControlShape(size, target.steps, budget, target, budget == target)
        if shape.exact:
            return shape
        if best is None or abs(budget.demonstrations - target.demonstrations) < abs(
            best.budget.demonstrations - target.demonstrations
        ):
            best = shape
    assert best is not None
    return best


def control_spec(of: MethodSpec, shape: ControlShape) -> MethodSpec:
    """The budget-matched SFT control of a from-SFT method (one run folder per distinct shape). One micro-batch
    per step (``train.grad_accum=1``), as :func:`matched_control` counted it."""
    name = f"{CONTROL}-b{shape.batch_size}-n{shape.max_steps}"
    overrides = (f"train.batch_size={shape.batch_size}", "train.grad_accum=1", f"train.max_steps={shape.max_steps}")
    matched = "exact" if shape.exact else f"as close as SFT gets: {shape.budget} against {shape.target}"
    return MethodSpec(name, "sft", overrides, from_sft=True, controls=(of.name,), matched=matched)


def rft_overrides(n_examples: int, batch_size: int, passes: int) -> tuple[str, ...]:
    """RFT at the budget of ``passes`` SFT epochs: one round per step, a batch of demonstration prompts each.

    The round size is the divisor of ``n_examples`` nearest ``batch_size`` (within half to twice it), so the
    rounds cover whole passes and an SFT control can see exactly the same demonstrations in as many steps; with no
    such divisor it is ``batch_size`` and the control is matched as closely as it can be (the study says so).
    """
    near = [d for d in range(max(1, batch_size // 2), 2 * batch_size + 1) if n_examples % d == 0]
    size = min(near, key=lambda d: (abs(d - batch_size), d)) if near else batch_size
    rounds = math.ceil(passes * n_examples / size)
    return (f"rft.iterations={rounds}", f"rft.prompts_per_iteration={size}")


@dataclass(frozen=True)
class Trial:
    """One training run of the study."""

    spec: MethodSpec
    lr: float
    passes: int
    seed: int

    @property
    def setting(self) -> str:
        """The tuned settings, e.g. ``lr=1e-05 passes=1`` (what dev chose between)."""
        return f"lr={self.lr:g} passes={self.passes}"

    @property
    def name(self) -> str:
        return f"{self.spec.name}-lr{self.lr:g}-p{self.passes}-s{self.seed}"


def tuning_trials(spec: MethodSpec, lrs: Sequence[float], passes: Sequence[int], budget: int) -> list[Trial]:
    """The dev tries of one method, all at the first seed: every lr (and every pass count, from the base)."""
    counts = list(passes) if spec.tuned_over_passes else [budget]
    return [Trial(spec, lr, p, seed=0) for p in counts for lr in lrs]


def check_grid(lrs: Sequence[float], passes: Sequence[int], budget: int, seeds: int) -> None:
    problems = [
        (not lrs, "--lrs needs at least one learning rate"),
        (any(lr <= 0 or not math.isfinite(lr) for lr in lrs), "--lrs must be positive numbers"),
        (not passes or any(p < 1 for p in passes), "--passes must be whole numbers of at least 1"),
        (budget < 1, "--budget must be at least 1 (passes of the from-SFT runs)"),
        (seeds < 1, "--seeds must be at least 1"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(message)
