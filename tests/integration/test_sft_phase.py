"""``sft_phase``: the paper's protocol (SFT, then IRFT or RFT from the SFT model) as one run equals the two runs a
user would chain by hand, resumes across the phase boundary, and refuses settings it would not read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rewardsft.cli import main
from rewardsft.config import load_config
from rewardsft.errors import ConfigError
from rewardsft.training.metrics import read_metrics
from tests.integration.test_irft import FAST, irft_args
from tests.integration.test_sft import weights

PHASE = ["sft_phase.epochs=1", "sft_phase.lr=1e-3", "irft.stages=2", "optim.schedule=constant"]
SFT_SIDE = [s for s in FAST if not s.startswith(("generation.", "optim.lr", "optim.name"))]


def same(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_one_run_equals_sft_then_irft_from_its_model(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "protocol"
    assert main(irft_args(llama_dir, builtin_jsonl, out, *PHASE)) == 0

    # by hand: SFT with the same model, data and batches (AdamW at sft_phase.lr), then IRFT from its final/
    sft = tmp_path / "sft"
    sft_args = ["train", "sft", f"model.name_or_path={llama_dir}", f"data.path={builtin_jsonl}", f"output_dir={sft}"]
    assert main([*sft_args, *SFT_SIDE, "optim.lr=1e-3", "optim.schedule=constant"]) == 0
    irft = tmp_path / "irft"
    assert main(irft_args(sft / "final", builtin_jsonl, irft, *PHASE[2:])) == 0

    assert same(out / "sft" / "final", sft / "final")
    assert same(out / "final", irft / "final")
    # both phases trained every parameter, and each kept its own log
    base, after_sft, after = weights(llama_dir), weights(out / "sft" / "final"), weights(out / "final")
    assert all(not torch.equal(base[k], after_sft[k]) for k in base)
    assert all(not torch.equal(after_sft[k], after[k]) for k in base)
    sft_records = read_metrics(out / "sft" / "metrics.jsonl")
    assert sft_records and all("train/loss" in r for r in sft_records)
    assert any("irft/loss" in r for r in read_metrics(out / "metrics.jsonl"))
    assert not any("irft/loss" in r for r in sft_records)
    # config.yaml records the run as it was given (the base, the SFT phase), so the same config continues it
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["model"]["name_or_path"] == str(llama_dir)
    assert recorded["sft_phase"] == {"epochs": 1, "lr": 1e-3}
    again = ["train", "irft", "--config", str(out / "config.yaml"), "resume=true"]
    assert main(again) == 0 and same(out / "final", irft / "final")

    # rerun with resume: the finished SFT phase is not touched, and the IRFT phase ends where it ended
    stamps = {p: p.stat().st_mtime_ns for p in (out / "sft").rglob("*") if p.is_file()}
    steps = len(read_metrics(out / "metrics.jsonl"))
    assert main([*irft_args(llama_dir, builtin_jsonl, out, *PHASE), "resume=true"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(read_metrics(out / "metrics.jsonl")) == steps and same(out / "final", irft / "final")

    # the SFT phase continues only under its own settings
    changed = [*irft_args(llama_dir, builtin_jsonl, out, *PHASE), "resume=true", "sft_phase.lr=5e-4"]
    assert main(changed) == 2
    assert (
        "(the run's SFT phase) was trained with optim.lr=0.001, but this run now sets 0.0005" in capsys.readouterr().err
    )

    # overwrite replaces both phases (after checking the input: a bad data path leaves the run as it was)
    marks = {p: p.stat().st_mtime_ns for p in (out / "sft" / "final", out / "final") for p in p.glob("*.safetensors")}
    assert main([*irft_args(llama_dir, tmp_path / "missing.jsonl", out, *PHASE), "overwrite=true"]) == 2
    assert {p: p.stat().st_mtime_ns for p in marks} == marks
    assert main([*irft_args(llama_dir, builtin_jsonl, out, *PHASE), "overwrite=true"]) == 0
    assert all(p.stat().st_mtime_ns != stamp for p, stamp in marks.items())
    assert same(out / "final", irft / "final")


def test_rft_takes_an_sft_phase_too(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rft"
    args = [
        "train",
        "rft",
        f"model.name_or_path={llama_dir}",
        f"data.path={builtin_jsonl}",
        f"output_dir={out}",
        *SFT_SIDE,
        "generation.max_new_tokens=8",
        "rft.iterations=2",
        "rft.prompts_per_iteration=4",
        "rft.samples_per_prompt=2",
        "sft_phase.epochs=1",
        "sft_phase.lr=1e-3",
    ]
    assert main(args) == 0
    assert (out / "sft" / "final").is_dir() and (out / "final").is_dir()
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["model"]["name_or_path"] == str(llama_dir) and recorded["sft_phase"]["epochs"] == 1
    # the policy's first rounds start from the SFT model: its reference for the KL penalty is that model
    assert "rft phase: from " + str((out / "sft" / "final").resolve()) in capsys.readouterr().out


def test_two_processes_run_both_phases(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    """One process group for both phases (the SFT phase must not end it: the reward phase needs it)."""
    out = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", "29541", "-m", "rewardsft.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = irft_args(llama_dir, builtin_jsonl, out, *PHASE, "irft.stages=1")
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for folder in (out / "sft", out):
        assert json.loads((folder / "run.json").read_text())["world_size"] == 2
        assert (folder / "final" / "model.safetensors").is_file()


def test_settings_the_phase_would_not_read_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"sft_phase.*here the whole run is SFT"):
        load_config("sft", overrides=["sft_phase.epochs=1"])
    with pytest.raises(ConfigError, match=r"sft_phase\.lr.*sft_phase\.epochs is 0"):
        load_config("irft", overrides=["sft_phase.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"sft_phase\.epochs must be >= 0"):
        load_config("irft", overrides=["sft_phase.epochs=-1"])
    assert load_config("irft", overrides=["sft_phase.epochs=2", "sft_phase.lr=1e-4"]).sft_phase.epochs == 2
    # settings of the reward phase that its SFT phase has no use for are not passed on (SFT reads
    # train.eval_batch_size only with held-out data; IRFT reads it for its snapshot pass)
    assert load_config("irft", overrides=["sft_phase.epochs=1", "train.eval_batch_size=32"]).train.eval_batch_size == 32


def test_a_non_empty_output_dir_is_refused_before_the_sft_phase_writes(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(irft_args(llama_dir, builtin_jsonl, out, *PHASE)) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
