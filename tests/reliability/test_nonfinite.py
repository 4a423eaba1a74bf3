"""Numerical guards: a NaN/inf gradient stops the run before it is applied (the newest checkpoint stays good and
resuming reproduces an uninterrupted run) or, with ``train.on_nonfinite=skip``, is skipped and counted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rewardsft.cli import main
from rewardsft.errors import NonFiniteError
from rewardsft.recipes import sft
from rewardsft.training.engine import AccelerateEngine
from rewardsft.training.metrics import read_metrics
from rewardsft.training.step import optimizer_step
from tests.integration.test_sft import sft_args, weights


def one_param_step(on_nonfinite: str, grad: float) -> tuple[torch.nn.Parameter, Any, Any]:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    param.grad = torch.full((3,), grad)
    return param, optimizer, scheduler


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_gradient_is_never_applied(bad: float) -> None:
    param, optimizer, scheduler = one_param_step("stop", bad)
    with pytest.raises(NonFiniteError, match=r"train\.on_nonfinite=skip"):
        optimizer_step(None, [param], optimizer, scheduler, 1.0, "stop")
    assert torch.equal(param.detach(), torch.ones(3)) and param.grad is None

    param, optimizer, scheduler = one_param_step("skip", bad)
    stats = optimizer_step(None, [param], optimizer, scheduler, 1.0, "skip")
    assert stats.skipped and stats.metrics()["train/nonfinite_skipped"] == 1.0
    assert torch.equal(param.detach(), torch.ones(3)) and param.grad is None
    assert scheduler.get_last_lr()[0] == pytest.approx(0.25)  # the schedule still advanced: 0.5 * 1/2


def test_a_finite_step_is_applied_and_not_counted_as_skipped() -> None:
    param, optimizer, scheduler = one_param_step("stop", 2.0)
    stats = optimizer_step(None, [param], optimizer, scheduler, None, "stop")
    assert not stats.skipped and "train/nonfinite_skipped" not in stats.metrics()
    assert stats.grad_norm == pytest.approx(2.0 * math.sqrt(3)) and torch.allclose(param.detach(), torch.zeros(3))


def poison_step(monkeypatch: pytest.MonkeyPatch, at_call: int) -> None:
    """Make the gradients of the ``at_call``-th SFT step NaN (as a NaN loss would)."""
    original = sft.accumulate_sft_step
    calls = {"n": 0}

    def poisoned(accelerator: Any, model: Any, *args: Any) -> dict[str, float]:
        out = original(accelerator, model, *args)
        calls["n"] += 1
        if calls["n"] == at_call:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.fill_(math.nan)
        return out

    monkeypatch.setattr(sft, "accumulate_sft_step", poisoned)


COMMON = ["train.max_steps=6", "train.save_every=2", "train.batch_size=4", "train.keep_checkpoints=5"]


def test_stop_keeps_the_last_good_checkpoint_and_resume_matches_an_uninterrupted_run(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert main(sft_args(llama_dir, builtin_jsonl, tmp_path / "whole", *COMMON)) == 0
    stopped = tmp_path / "stopped"
    poison_step(monkeypatch, at_call=5)
    assert main(sft_args(llama_dir, builtin_jsonl, stopped, *COMMON)) == 1
    err = capsys.readouterr().err
    assert "training stopped: the gradient norm is nan" in err and "Traceback" not in err
    assert [p.name for p in sorted((stopped / "checkpoints").iterdir())] == ["step-2", "step-4"]
    assert not (stopped / "final").exists()
    monkeypatch.undo()
    assert main(sft_args(llama_dir, builtin_jsonl, stopped, *COMMON, "resume=true")) == 0
    whole, resumed = weights(tmp_path / "whole" / "final"), weights(stopped / "final")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_skip_counts_the_step_and_the_run_finishes_finite(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison_step(monkeypatch, at_call=3)
    out = tmp_path / "skipped"
    assert main(sft_args(llama_dir, builtin_jsonl, out, *COMMON, "train.on_nonfinite=skip")) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if r.get("train/nonfinite_skipped")] == [3]
    assert rows[2]["train/grad_norm"] is None  # metrics.jsonl writes non-finite values as null
    assert all(torch.isfinite(t).all() for t in weights(out / "final").values())


@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
def test_under_an_fp16_scaler_overflow_is_skipped_until_the_scale_cannot_explain_it(
    on_nonfinite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scaler's overflows are its own business (it halves the scale and skips: no error under ``stop``, and
    under ``skip`` the scaler still steps, or the next step would raise 'unscale_() has already been called');
    a gradient still non-finite at a scale of 1 is a real NaN and meets ``on_nonfinite``."""
    from accelerate import Accelerator

    from tests.amp import fp16_accelerators

    with fp16_accelerators(monkeypatch, init_scale=2.0):
        check_scaler_steps(Accelerator(cpu=True), on_nonfinite)


def check_scaler_steps(accelerator: Any, on_nonfinite: str) -> None:
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = accelerator.prepare(torch.optim.SGD([param], lr=0.5))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def step(loss_value: float) -> Any:
        accelerator.backward((param * loss_value).sum())
        return optimizer_step(AccelerateEngine(accelerator), [param], optimizer, scheduler, 1.0, on_nonfinite)

    first = step(math.nan)  # at scale 2: the scaler skips it and halves the scale
    assert first.skipped and first.loss_scale == 2.0 and first.metrics()["train/nonfinite_skipped"] == 1.0
    assert torch.equal(param.detach(), torch.ones(3))
    if on_nonfinite == "stop":
        with pytest.raises(NonFiniteError, match="fp16 loss scale of 1"):
            step(math.nan)
    else:
        assert step(math.nan).skipped  # at scale 1, skipped again (the scaler steps, so no unscale_ error)
        assert step(math.nan).skipped
    assert torch.equal(param.detach(), torch.ones(3))
    good = step(1.0)
    assert not good.skipped and "train/nonfinite_skipped" not in good.metrics()
    assert torch.allclose(param.detach(), torch.full((3,), 1 - 0.5 / math.sqrt(3)))  # clipped to norm 1
