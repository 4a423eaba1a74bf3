"""Disk guards: an unwritable output folder or a disk without room for a checkpoint fails before training, with
the space needed in the message; nothing already there is touched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from rewardsft.cli import main
from rewardsft.training.run import checkpoint_bytes
from tests.integration.test_sft import sft_args


def test_checkpoint_size_counts_weights_and_optimizer_moments() -> None:
    model = torch.nn.Linear(10, 10)  # 110 fp32 parameters
    assert checkpoint_bytes([model], "adamw") == 110 * (4 + 8)
    assert checkpoint_bytes([model], "rmsprop") == 110 * (4 + 4)
    model.bias.requires_grad_(False)
    assert checkpoint_bytes([model], "adamw") == 100 * 12
    assert checkpoint_bytes([model.to(torch.bfloat16)], "adamw") == 100 * 6  # moments in the parameters' dtype
    # DeepSpeed: fp32 master weights and moments in its shards (and the module's weights again under ZeRO-2).
    from rewardsft.training.engine import DeepSpeedEngine

    zero = DeepSpeedEngine.__new__(DeepSpeedEngine)
    zero.stage = 3
    assert checkpoint_bytes([model], "adamw", zero) == 100 * (2 + 12)
    zero.stage = 2
    assert checkpoint_bytes([model], "adamw", zero) == 100 * (2 + 12 + 2)


def test_no_room_for_a_checkpoint_fails_before_training(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1000))
    out = tmp_path / "run"
    assert main(sft_args(llama_dir, builtin_jsonl, out, "train.max_steps=2")) == 2
    err = capsys.readouterr().err
    assert "GB free but one checkpoint and the final model need about" in err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_an_unwritable_output_folder_is_refused_before_anything_is_written(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # Tests run as root here, for whom chmod does not lock a folder: the permission check is what is tested.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    assert main(sft_args(llama_dir, builtin_jsonl, locked / "run", "train.max_steps=2")) == 2
    assert f"{locked} is not a writable directory" in capsys.readouterr().err
    assert list(locked.iterdir()) == []
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert main(sft_args(llama_dir, builtin_jsonl, not_a_folder / "run", "train.max_steps=2")) == 2
    assert not_a_folder.read_text() == "x"
