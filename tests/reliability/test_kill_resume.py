"""SIGKILL at random moments, resume, repeat: every recipe ends on the uninterrupted run's weights.

The fast tier kills SFT and IRFT (T=2, cached snapshot) twice each; ``-m slow`` runs the long version (at least
30 kills over SFT, IRFT cached, IRFT lora and RFT) and writes its counts to ``reliability-kills.json`` in the
test's temporary folder (docs/reliability.md has the numbers of the last run).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.harness import kill_and_resume, summary, write_summary

TINY = [
    "train.batch_size=4",
    "optim.lr=1e-3",
    "data.max_length=64",
    "data.max_prompt_length=32",
    "logging.progress=false",
    "train.save_every=2",
]
GENERATE = ["generation.max_new_tokens=12", "generation.batch_size=24"]
RECIPES: dict[str, list[str]] = {
    "sft": ["sft", "train.max_steps=24", *TINY],
    "irft-cached": ["irft", "irft.stages=2", "train.max_steps=12", "optim.name=adamw", *GENERATE, *TINY],
    "irft-lora": [
        "irft",
        "irft.stages=2",
        "irft.snapshot=lora",
        "lora.enabled=true",
        "lora.r=4",
        "train.max_steps=12",
        "optim.name=adamw",
        *GENERATE,
        *TINY,
    ],
    # the paper's protocol in one run: an SFT phase into OUTPUT_DIR/sft, then IRFT from its model
    "irft-sft-phase": [
        "irft",
        "sft_phase.epochs=1",
        "sft_phase.lr=1e-3",
        "irft.stages=2",
        "train.max_steps=8",
        "optim.name=adamw",
        *GENERATE,
        *TINY,
    ],
    "rft": [
        "rft",
        "rft.iterations=8",
        "rft.prompts_per_iteration=8",
        "rft.samples_per_prompt=2",
        *GENERATE,
        *[t for t in TINY if not t.startswith("train.save_every")],
        "train.save_every=1",
    ],
}


def args_for(recipe: str, model: Path, data: Path) -> Callable[[Path], list[str]]:
    method, *settings = RECIPES[recipe]

    def make(out: Path) -> list[str]:
        return ["train", method, f"model.name_or_path={model}", f"data.path={data}", f"output_dir={out}", *settings]

    return make


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny models run ~10x faster single-threaded, and two runs (test + machine) do not fight over cores.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.parametrize("recipe", ["sft", "irft-cached", "irft-sft-phase"])
def test_two_random_kills_then_resume_equal_the_uninterrupted_run(
    recipe: str, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    outcome = kill_and_resume(recipe, args_for(recipe, llama_dir, builtin_jsonl), tmp_path, kills=2, seed=1)
    assert outcome.equal, summary([outcome])
    assert not outcome.regenerated_stages


@pytest.mark.slow
def test_many_kills_across_the_recipes(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    kills = int(os.environ.get("RELIABILITY_KILLS_PER_RECIPE", "8"))
    outcomes = [
        kill_and_resume(r, args_for(r, llama_dir, builtin_jsonl), tmp_path, kills=kills, seed=i)
        for i, r in enumerate(RECIPES)
    ]
    write_summary(outcomes, tmp_path / "reliability-kills.json")
    print(summary(outcomes))
    result = summary(outcomes)
    assert result["divergent"] == [] and result["regenerated_stages"] == {}
    assert result["kills"] >= len(RECIPES) * kills
