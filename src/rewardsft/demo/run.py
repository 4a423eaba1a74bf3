"""``rewardsft demo``: an offline end-to-end run (for now a short SFT on the built-in task).

The full demo (SFT vs IRFT vs RFT with evaluation and a report) replaces this when those recipes land.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rewardsft.config import ConfigError, load_config
from rewardsft.demo.builtin import write_builtin
from rewardsft.recipes.sft import train_sft
from rewardsft.tiny import write_tiny_model
from rewardsft.training.metrics import METRICS_FILE, read_metrics


def run_demo(output_dir: Path, overwrite: bool = False) -> Path:
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{output_dir} is not empty; pass --overwrite to replace it")
        shutil.rmtree(output_dir)
    model_dir = write_tiny_model(output_dir / "tiny-model", arch="llama", hidden_size=64, layers=2)
    data = write_builtin(output_dir / "data" / "train.jsonl")
    config = load_config(
        "sft",
        overrides=[
            f"model.name_or_path={model_dir}",
            f"data.path={data}",
            f"output_dir={output_dir / 'sft'}",
            "train.epochs=30",
            "train.batch_size=8",
            "optim.lr=3e-3",
            "train.save_every=60",
            "train.log_every=20",
            f"data.eval_path={data}",
            "data.max_length=64",
            "data.max_prompt_length=32",
        ],
    )
    final = train_sft(config)
    losses = [rec["train/loss"] for rec in read_metrics(config_path(config.output_dir)) if "train/loss" in rec]
    print(f"demo: SFT loss {losses[0]:.3f} -> {losses[-1]:.3f}; model at {final}")
    return final


def config_path(output_dir: str) -> Path:
    return Path(output_dir) / METRICS_FILE
