"""fp16 mixed precision end to end, under a real ``torch.amp.GradScaler`` (``tests/amp.py``): every recipe trains,
the scaler's early overflows are skipped and counted instead of stopping the run (``train.on_nonfinite=stop``, the
default), every trainable parameter changes, and a resumed run goes on at the scale it reached.

The scaler starts at 2^24 here, far above what the tiny model's fp16 activations' gradients fit under, so the first
steps overflow for certain (accelerate's default is 2^16; on real models its first steps overflow the same way).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rewardsft.cli import main
from rewardsft.training.metrics import read_metrics
from tests.amp import fp16_accelerators
from tests.integration.test_irft import irft_args
from tests.integration.test_rft import rft_args
from tests.integration.test_sft import sft_args, weights

INIT_SCALE = 2.0**24


def check_trained(out: Path, initial: Path, step_key: str, prefix: str = "train") -> list[dict[str, float]]:
    """Early steps skipped by the scaler, later ones applied, the scale backed off, every parameter moved."""
    rows = [r for r in read_metrics(out / "metrics.jsonl") if step_key in r]
    skipped = [r for r in rows if r.get(f"{prefix}/nonfinite_skipped")]
    applied = [r for r in rows if not r.get(f"{prefix}/nonfinite_skipped")]
    assert skipped and applied, [(r["step"], r.get(f"{prefix}/loss_scale")) for r in rows]
    assert skipped[0]["step"] == rows[0]["step"] and skipped[0][f"{prefix}/loss_scale"] == INIT_SCALE
    assert all(math.isfinite(r[f"{prefix}/grad_norm"]) for r in applied)
    assert min(r[f"{prefix}/loss_scale"] for r in rows) < INIT_SCALE
    before, after = weights(initial), weights(out / "final")
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == [] and all(torch.isfinite(t).all() for t in after.values())
    return rows


def test_sft_fp16(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sft"
    with fp16_accelerators(monkeypatch, INIT_SCALE):
        assert main(sft_args(llama_dir, builtin_jsonl, out, "train.max_steps=12", "train.log_every=4")) == 0
    rows = check_trained(out, llama_dir, "train/loss")
    # Skipped steps are logged whatever train.log_every says, so the rows count every skip.
    off_schedule = [r["step"] for r in rows if r["step"] % 4]
    assert off_schedule and off_schedule == [r["step"] for r in rows if r["step"] % 4 and r["train/nonfinite_skipped"]]


@pytest.mark.parametrize("pair_forward", ["split", "joint", "shared"])
def test_irft_fp16(
    pair_forward: str, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / pair_forward
    args = ["data.max_rows=48", "irft.stages=1", "train.epochs=2", f"irft.pair_forward={pair_forward}"]
    with fp16_accelerators(monkeypatch, INIT_SCALE):
        assert main(irft_args(llama_dir, builtin_jsonl, out, *args, "irft.sft_weight=0.5")) == 0
    check_trained(out, llama_dir, "irft/loss")


def test_rft_fp16(
    llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "rft"
    with fp16_accelerators(monkeypatch, INIT_SCALE):
        assert main(rft_args(llama_dir, split_data, out, "rft.iterations=12")) == 0
    check_trained(out, llama_dir, "policy/loss")
    # The reward model is not under the scaler (plain fp32 backward): never skipped, always a scale-free step.
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "rm/loss" in r]
    assert not any("rm/nonfinite_skipped" in r or "rm/loss_scale" in r for r in rows)


def test_resume_keeps_the_loss_scale(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["train.max_steps=10", "train.save_every=5", "train.keep_checkpoints=3"]
    with fp16_accelerators(monkeypatch, INIT_SCALE):
        assert main(sft_args(llama_dir, builtin_jsonl, tmp_path / "whole", *common)) == 0
        assert main(sft_args(llama_dir, builtin_jsonl, tmp_path / "cut", *common)) == 0
    # Resume from step 5 as if the run had been killed after its checkpoint.
    for extra in ("step-10",):
        import shutil

        shutil.rmtree(tmp_path / "cut" / "checkpoints" / extra)
    with fp16_accelerators(monkeypatch, INIT_SCALE):
        assert main(sft_args(llama_dir, builtin_jsonl, tmp_path / "cut", *common, "resume=true")) == 0
    whole = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    cut = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r.get("train/loss_scale") for r in cut] == [r.get("train/loss_scale") for r in whole]
    a, b = weights(tmp_path / "whole" / "final"), weights(tmp_path / "cut" / "final")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_fp16_trains_float32_weights(
    llama_dir: Path,
    builtin_jsonl: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """model.dtype=auto means bf16 weights on a GPU, which fp16 autocast + a scaler must not train: under mixed
    precision auto is float32 (master weights), and half-precision weights are refused with the fix."""
    from rewardsft.models import resolve_dtype

    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    with fp16_accelerators(monkeypatch, INIT_SCALE):
        assert resolve_dtype("auto", cuda) == torch.float32
        assert main(sft_args(llama_dir, builtin_jsonl, tmp_path / "half", "model.dtype=float16")) == 2
    assert "set model.dtype=auto" in capsys.readouterr().err
