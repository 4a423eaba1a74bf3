"""`rewardsft demo --quick`: the README's main job, end to end offline, asserting behaviour that can fail."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rewardsft.cli import main
from rewardsft.demo.task import correct_answer, habitual_answer, is_habit, prompt_text, true_reward, word_of
from rewardsft.training.metrics import read_metrics


def test_task_reward_and_habit() -> None:
    prompt = prompt_text("abcd")
    assert prompt == "reverse a b c d =" and word_of(prompt) == "abcd"
    assert true_reward(prompt, correct_answer("abcd")) == 1.0 and true_reward(prompt, " d c b") == 0.0
    assert is_habit(prompt, habitual_answer("abcd")) and not is_habit(prompt, correct_answer("abcd"))
    assert true_reward("what is 2+2?", "4") == 0.0


def test_demo_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    base = json.loads((out / "base-eval" / "accuracy" / "summary.json").read_text())
    runs = out / "runs"
    accuracy = {
        name: [
            json.loads((run / "eval" / "accuracy" / "summary.json").read_text())
            for run in sorted(runs.glob(f"{name}-s*"))
        ]
        for name in ("sft", "spin", "irft", "rft")
    }
    assert all(len(seeds) == 2 for seeds in accuracy.values())
    # SFT on correct demonstrations beats the habit-laden base on held-out prompts, and copies less.
    sft_sampled = sum(a["sample_correct"] for a in accuracy["sft"]) / 2
    assert sft_sampled > base["sample_correct"]
    assert sum(a["sample_habit"] for a in accuracy["sft"]) / 2 < base["sample_habit"]
    # Every method's row is in the report with finite figures, and every claim printed carries a verdict.
    report = (out / "report" / "report.md").read_text()
    for label in ("SFT", "SPIN (IRFT T=1)", "IRFT (T=4)", "RFT"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {label} |"))
        numbers = [float(x) for x in re.findall(r"-?\d+\.\d+", row)]
        assert numbers and all(math.isfinite(x) for x in numbers)
    claims = [line for line in printed.splitlines() if line.startswith("| ") and "(2 seeds)" in line]
    # Two seeds per method: every verdict says so (the interval cannot see seed-to-seed variance).
    assert claims and all(re.search(r"\| (better|worse|not resolved) \(2 seeds\) \|$", line) for line in claims)
    assert {"greedy accuracy", "habit share (lower is better)", "win rate vs SFT − 0.5"} <= {
        line.split("|")[2].strip() for line in claims
    }
    # One number, one verdict: the demo's habit-share verdicts are the report's difference table's.
    main_claims = [c for c in claims if not c.startswith("| SFT")]  # the protocol's rows have their own table
    demo_habit = {c.split("|")[1].strip(): c.split("|")[5].strip() for c in main_claims if "habit share" in c}
    table_habit = {
        line.split("|")[1].strip(): line.split("|")[6].strip()
        for line in report.splitlines()
        if line.startswith("| ") and "| sample_habit ↓ |" in line
    }
    assert demo_habit and demo_habit == table_habit
    # The paper's protocol: SPIN and IRFT T=2/T=4 from each SFT model against SFT continued for exactly the same budget.
    from rewardsft.layout import run_config
    from rewardsft.studies.plan import budget_of, control_spec, matched_control, parse_method

    protocol = [c.split("|")[1].strip() for c in claims if c.startswith("| SFT")]
    n = sum(1 for line in (out / "data" / "demonstrations.jsonl").read_text().splitlines() if line.strip())
    controls = set()
    for seed in (1, 2):
        for method in ("spin-from-sft", "irft-t2-from-sft", "irft-t4-from-sft"):
            run = runs / f"{method}-s{seed}"
            config = run_config(run)
            target = budget_of(config, n)
            shape = matched_control(target, n, config.train.batch_size)
            # Its own control: SFT continued from the same SFT model, with the shape that spends its budget.
            control = runs / f"{control_spec(parse_method(method), shape).name}-lr{config.optim.lr:g}-s{seed}"
            assert run_config(control).model.name_or_path == config.model.name_or_path
            assert budget_of(run_config(control), n) == shape.budget and shape.budget.steps == target.steps > 0
            assert last_step(control) == target.steps == last_step(run)
            assert (run / "eval" / "accuracy" / "summary.json").is_file()
            controls.add(f"SFT continued ({shape.max_steps} steps of {shape.batch_size}) vs SFT")
    assert set(protocol) == {
        "SFT → SPIN",
        "SFT → IRFT (T=2)",
        "SFT → IRFT (T=4)",
        "SFT → SPIN vs SFT",
        "SFT → IRFT (T=2) vs SFT",
        "SFT → IRFT (T=4) vs SFT",
        *controls,
    }
    assert "The paper's protocol: SPIN and IRFT T=2/T=4 from the SFT model" in report
    for png in ("demo-accuracy.png", "demo-robustness.png", "differences.png"):
        assert (out / "report" / png).is_file()
    assert "demo-robustness.png" in (out / "report" / "report.html").read_text()
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 2  # refuses to overwrite without --overwrite


def last_step(run: Path) -> int:
    return max(r["step"] for r in read_metrics(run / "metrics.jsonl"))


def test_demo_toy_prints_agreeing_solutions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "toy"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if re.match(r"^\s+\d+(\.\d+)?\s+\(", line)]
    assert len(rows) >= 3
    assert all(float(row[-2]) < 1e-3 for row in rows)  # closed form vs iterative IRFT, max |Δ| per β
