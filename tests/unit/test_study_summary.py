"""The real-data study's summary (``benchmarks/study_summary.py``) on tiny hand-made run folders: win rates and
their intervals, demonstrations seen, wall time and the pooled line against numbers worked by hand."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from benchmarks.study_summary import base_win_rates, cost, pooled, win_rates

from rewardsft.studies.runner import record_launch


def with_samples(folder: Path, scores: Sequence[float]) -> Path:
    """A run (or base) folder whose judged samples score ``scores`` under both judges."""
    (folder / "eval" / "samples").mkdir(parents=True)
    rows = [{"text": f"t{i}", "minilm": s, "vader": s} for i, s in enumerate(scores)]
    (folder / "eval" / "samples" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_win_rate_of_a_two_seed_method_against_sft_by_hand(tmp_path: Path) -> None:
    sft = [with_samples(tmp_path / "sft-s0", [0.5, 0.5]), with_samples(tmp_path / "sft-s1", [0.1, 0.5])]
    spin = [with_samples(tmp_path / "spin-s0", [0.1, 0.9]), with_samples(tmp_path / "spin-s1", [0.9, 0.9])]
    # Seed 0: 0.1 loses to both 0.5s, 0.9 beats both -> 2/4. Seed 1: both 0.9s beat 0.1 and 0.5 -> 4/4.
    # Seeds averaged: (0.5 + 1.0) / 2.
    assert win_rates(spin, sft)["minilm"]["win_rate"] == pytest.approx(0.75)
    # The base against SFT's four samples pooled: 0.5 beats 0.1, ties the three 0.5s -> (1 + 3 * 0.5) / 4.
    base = with_samples(tmp_path / "base", [0.5])
    assert base_win_rates(base, sft)["vader"]["win_rate"] == pytest.approx(0.625)


def test_base_interval_resamples_the_base_samples_once_not_once_per_sft_seed(tmp_path: Path) -> None:
    # SFT's samples all score 0.5, so only the base's 40 samples (half 0, half 1) carry uncertainty: the win rate
    # is the share of base samples at 1, a proportion whose 95% interval is about 2 * 1.96 * sqrt(0.25 / 40) = 0.31
    # wide, however many SFT seeds there are. Resampling the base once per seed (4 seeds) averages 4 independent
    # copies and gives half that width.
    base = with_samples(tmp_path / "base", [0.0] * 20 + [1.0] * 20)
    sft = [with_samples(tmp_path / f"sft-s{seed}", [0.5] * 10) for seed in range(4)]
    entry = base_win_rates(base, sft)["minilm"]
    lo, hi = entry["ci95"]
    assert entry["win_rate"] == pytest.approx(0.5)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 40), abs=0.06)


def run_folder(tmp_path: Path, name: str, config: dict[str, Any]) -> Path:
    run = tmp_path / name
    (run / "stages" / "stage_0").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/tokens": 10.0, "gen/mean_length": 3.0}) + "\n")
    (run / "stages" / "stage_0" / "stats.json").write_text(json.dumps({"gen/mean_length": 3.0}))
    (run / "stages" / "stage_0" / "generations.jsonl").write_text("{}\n{}\n")
    return run


@pytest.mark.parametrize(
    ("method", "sections", "seen"),
    [
        # 16 rows, 1 epoch, each IRFT stage covers its chunk twice: 16 * 1 * 2.
        ("irft", {"train": {"epochs": 1}, "irft": {"stages": 2, "epochs_per_stage": 2}}, 32),
        ("sft", {"train": {"epochs": 3}}, 48),
        # 3 rounds of 5 prompts, one reward step each; the 4 samples per prompt share their demonstration: 3 * 5.
        (
            "rft",
            {"train": {"epochs": 1}, "rft": {"iterations": 3, "prompts_per_iteration": 5, "samples_per_prompt": 4}},
            15,
        ),
    ],
)
def test_demonstrations_seen_by_hand(tmp_path: Path, method: str, sections: dict[str, Any], seen: int) -> None:
    config = {"method": method, "data": {"max_rows": 16}, **sections}
    assert cost(run_folder(tmp_path, "run-s0", config))["demonstrations_seen"] == seen


def test_wall_time_reads_and_extends_the_old_single_launch_format(tmp_path: Path) -> None:
    run = run_folder(tmp_path, "sft-s0", {"method": "sft", "data": {"max_rows": 4}, "train": {"epochs": 1}})
    (run / "wall_time.json").write_text(json.dumps({"seconds": 12.5, "resumed": False}))
    assert cost(run)["wall_s"] == 12.5
    record_launch(run, {"start": 1000.0, "end": 1007.5, "resumed": True, "finished": True})
    assert cost(run)["wall_s"] == 20.0


def test_pooled_line_weighs_domains_equally_and_resamples_within_each() -> None:
    import torch

    # Domain A: 4 pairs all +2; domain B: 100 pairs all -1. Equal weights: (2 - 1) / 2, and constant differences
    # leave nothing to resample: the interval is the point.
    a, b = torch.full((4,), 2.0, dtype=torch.float64), torch.full((100,), -1.0, dtype=torch.float64)
    line = pooled([a, b])
    assert line["mean"] == pytest.approx(0.5) and line["ci95"] == pytest.approx([0.5, 0.5])
    assert line["verdict"] == "better" and line["domains"] == 2
    # Spread within a domain widens it: pairs of +-1 around 0 in both domains straddle zero.
    spread = torch.tensor([1.0, -1.0] * 50, dtype=torch.float64)
    wide = pooled([spread, spread])
    assert wide["ci95"][0] < 0 < wide["ci95"][1] and wide["verdict"] == "not resolved"


def test_rft_budget_stops_at_the_first_evaluation_the_next_ones_do_not_beat() -> None:
    from benchmarks.rft_budget import plateau

    rising_then_flat = [(0, 0.5), (4, 0.6), (8, 0.7), (12, 0.7), (16, 0.65), (20, 0.72)]
    assert plateau(rising_then_flat, 2) == (8, True)
    assert plateau([(0, 0.5), (4, 0.6), (8, 0.7), (12, 0.8)], 2) == (12, False)  # still rising: the end
    assert plateau([(0, 0.9), (4, 0.5), (8, 0.5), (12, 0.4)], 2) == (4, True)  # never round 0


def test_a_from_sft_method_is_pooled_against_the_control_its_study_gave_it(tmp_path: Path) -> None:
    from benchmarks.study_summary import control_of

    controls = {"sft-continued-b8-n16": ["spin-from-sft", "irft-t2-from-sft"]}
    (tmp_path / "study.json").write_text(json.dumps({"controls": controls}))
    assert control_of(tmp_path, "irft-t2-from-sft") == "sft-continued-b8-n16"
    assert control_of(tmp_path, "spin") is None
