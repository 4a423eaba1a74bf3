"""`rewardsft demo`: the README's main job, end to end offline."""

from __future__ import annotations

import json
from pathlib import Path

from rewardsft.cli import main
from rewardsft.demo.run import answer_overlap
from rewardsft.training.metrics import read_metrics


def test_answer_overlap_judge() -> None:
    assert answer_overlap("What is the capital of France?", "The capital of France is Paris.") == 1.0
    assert 0 < answer_overlap([{"role": "user", "content": "What is the capital of France?"}], "Paris") < 1
    assert answer_overlap("What is the capital of France?", "") == 0.0
    assert answer_overlap("unknown question", "anything") == 0.0


def test_demo_trains_evaluates_and_reports(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "demo done:" in printed and "win rate vs SFT" in printed
    for name in ("sft", "spin", "irft", "rft"):
        run = out / "runs" / name
        assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "README.md").is_file()
        gap = json.loads((run / "eval" / "gap" / "summary.json").read_text())
        assert gap["pairs"] == 12
        wins = json.loads((run / "eval" / "winrate" / "summary.json").read_text())
        assert wins["n"] == 12
    # Behaviour, not only files: each recipe did what it trains for.
    sft_losses = [r["train/loss"] for r in read_metrics(out / "runs" / "sft" / "metrics.jsonl") if "train/loss" in r]
    assert sft_losses[-1] < 0.5 * sft_losses[0]  # SFT fitted the demonstrations
    rounds = [r for r in read_metrics(out / "runs" / "rft" / "metrics.jsonl") if "rm/loss" in r]
    assert rounds[-1]["rm/loss"] < rounds[0]["rm/loss"]  # the reward model learned demonstration > generation
    held_out = [
        r["eval/rm_accuracy"] for r in read_metrics(out / "runs" / "rft" / "metrics.jsonl") if "eval/rm_accuracy" in r
    ]
    assert held_out[-1] > 0.75
    # Not asserted yet: SPIN/IRFT's margin in the demo ends near 0 (the sft_weight anchor and the small lr leave
    # the contrastive term idle); the demo issue (#9) redesigns the task and settings.
    sft_gap = json.loads((out / "runs" / "sft" / "eval" / "gap" / "summary.json").read_text())
    assert sft_gap["accuracy"]["mean"] > 0.8  # trained on answers only, it still ranks them above scrambles
    assert (out / "runs" / "spin" / "stages" / "stage-1" / "generations.jsonl").is_file()
    assert (out / "runs" / "irft" / "stages" / "stage-3" / "generations.jsonl").is_file()
    assert (out / "runs" / "rft" / "reward_model" / "config.json").is_file()
    assert (out / "report" / "report.html").is_file() and len(list((out / "report").glob("*.png"))) == 7
    assert (out / "report" / "differences.png").is_file()
    # Every claim against SFT is a paired difference with a verdict read from its interval.
    assert (
        "against SFT, paired" in printed and "## Difference vs baseline" in (out / "report" / "report.md").read_text()
    )
    claims = [line for line in printed.splitlines() if "gap difference" in line or "win rate - 0.5" in line]
    assert len(claims) == 6 and all(line.rstrip().endswith(("better", "worse", "not resolved")) for line in claims)
    assert main(["demo", "--output-dir", str(out)]) == 2  # refuses to overwrite without --overwrite
