"""Paired comparisons on hand-made per-example tables."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml

from rewardsft.cli import main
from rewardsft.errors import ConfigError
from rewardsft.eval.paired import (
    check_aligned,
    compare_runs,
    differences_markdown,
    group_by_seed,
    paired_difference,
    read_per_example,
    sign_flip_p,
    sign_test_p,
)

MODEL = [2.0, -1.0, 0.5, 3.0, 1.5, -0.5, 2.5, 0.0]
BASE = [1.0, -1.5, 1.0, 2.0, 1.0, -2.0, 2.0, 0.5]


def test_identical_models_differ_by_exactly_zero() -> None:
    d = paired_difference(MODEL, MODEL, "gap")
    assert d.mean == 0.0 and d.ci95 == (0.0, 0.0)
    assert (d.positive, d.zero, d.negative) == (0, 8, 0) and d.sign_p == 1.0 and d.permutation_p == 1.0
    assert d.verdict == "not resolved"


@pytest.mark.parametrize("shift", [0.25, -3.0])
def test_a_constant_shift_gives_exactly_that_shift(shift: float) -> None:
    d = paired_difference([b + shift for b in BASE], BASE, "gap")
    assert d.mean == pytest.approx(shift) and d.ci95 == pytest.approx((shift, shift))
    assert d.verdict == ("better" if shift > 0 else "worse")
    assert d.sign_p == pytest.approx(2 / 2**8)  # all 8 of one sign


def test_swapping_the_models_negates_the_difference_and_its_interval() -> None:
    forward, backward = paired_difference(MODEL, BASE), paired_difference(BASE, MODEL)
    assert backward.mean == -forward.mean
    assert backward.ci95 == (-forward.ci95[1], -forward.ci95[0])
    assert (backward.positive, backward.negative) == (forward.negative, forward.positive)
    assert backward.sign_p == forward.sign_p and backward.permutation_p == pytest.approx(forward.permutation_p)


def test_the_paired_interval_is_narrower_than_either_models_own() -> None:
    # Pair difficulty varies a lot, the model's advantage little: the unpaired intervals overlap, the paired one
    # excludes zero.
    difficulty = [(-1) ** i * 10.0 * i for i in range(40)]
    base = difficulty
    model = [v + 1.0 + 0.3 * (-1) ** (i // 2) for i, v in enumerate(difficulty)]
    d = paired_difference(model, base)
    own = paired_difference(model, [0.0] * 40)
    assert d.verdict == "better" and d.ci95[1] - d.ci95[0] < 0.1 * (own.ci95[1] - own.ci95[0])


def test_sign_test_by_hand() -> None:
    assert sign_test_p(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(5, 5) == 1.0


def enumerated_p(diffs: list[int]) -> float:
    """The sign-flip p-value by brute force: every one of the 2**n sign assignments, in exact integer sums."""
    observed = abs(sum(diffs))
    flips = itertools.product((1, -1), repeat=len(diffs))
    return sum(abs(sum(s * d for s, d in zip(signs, diffs, strict=True))) >= observed for signs in flips) / 2 ** len(
        diffs
    )


def test_sign_flip_p_enumerates_every_assignment_for_small_n() -> None:
    # 2**10 = 1024 <= 2000 resamples: exact, equal to brute force (integers: sums and ties are exact).
    for diffs in (
        [3, -1, 2, 0, 5, -2, 1, 4, -3, 2],
        [1, -1, 2, -2, 3, 1, -1, 0, 2, -3],
        [1, 2, 3, 4, 5, -1, 2, 2, 1, 3],
    ):
        p = sign_flip_p(torch.tensor(diffs, dtype=torch.float64), 2000, 0)
        assert p == enumerated_p(diffs)
    assert 0.05 < enumerated_p([3, -1, 2, 0, 5, -2, 1, 4, -3, 2]) < 0.5  # a p-value neither tiny nor 1
    # All of one sign: only the observed assignment and its mirror are as extreme.
    assert sign_flip_p(torch.ones(10, dtype=torch.float64), 2000, 0) == 2 / 1024
    assert paired_difference([1.0] * 10, [0.0] * 10).permutation_p == 2 / 1024


def test_sign_flip_p_by_resampling_agrees_with_enumeration() -> None:
    diffs = [3, -1, 2, 0, 5, -2, 1, 4, -3, 2, -4, 1, -2, 1]  # 2**14 = 16384 > 4000 resamples: Monte Carlo
    p = sign_flip_p(torch.tensor(diffs, dtype=torch.float64), 4000, 0)
    exact = enumerated_p(diffs)
    assert 0.1 < exact < 0.6 and p == pytest.approx(exact, abs=0.03)  # ~4 Monte Carlo sd


def write_accuracy(folder: Path, habit: list[float], extra: dict[str, object] | None = None) -> Path:
    """A demo-style ``eval/accuracy`` (``paired_metrics`` in the summary): correctness and the habit's share."""
    folder.mkdir(parents=True)
    metrics = ["sample_correct", "sample_habit"]
    summary = {"kind": "task_accuracy", "paired_metrics": metrics, **(extra or {})}
    (folder / "summary.json").write_text(json.dumps(summary))
    with (folder / "per_example.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["row", "pair_id", *metrics])
        writer.writeheader()
        for i, h in enumerate(habit):
            writer.writerow({"row": i + 1, "pair_id": f"p{i}", "sample_correct": 1.0 - h, "sample_habit": h})
    return folder


def accuracy_run(root: Path, name: str, seed: int, lr: float, habit: list[float]) -> Path:
    write_accuracy(root / name / "eval" / "accuracy", habit)
    return write_config(root / name, seed, lr)


def test_a_lower_is_better_metric_that_rises_is_worse_everywhere(tmp_path: Path) -> None:
    from rewardsft.demo.run import verdict_table
    from rewardsft.eval.report import build_report

    assert paired_difference([1.0] * 8, [0.0] * 8, "sample_habit").verdict == "worse"
    assert paired_difference([0.0] * 8, [1.0] * 8, "sample_habit").verdict == "better"
    seeds = (1, 2, 3)
    sft = [accuracy_run(tmp_path, f"sft-s{s}", s, 1e-5, [0.0] * 20) for s in seeds]
    irft = [accuracy_run(tmp_path, f"irft-s{s}", s, 5e-7, [1.0] * 10 + [0.0] * 10) for s in seeds]
    rows = {r["metric"]: r for r in compare_runs([*sft, *irft], sft[0])}
    habit, correct = rows["sample_habit"], rows["sample_correct"]
    assert habit["mean"] == pytest.approx(0.5) and habit["ci95"][0] > 0
    assert habit["verdict"] == "worse" and habit["higher_is_better"] is False
    assert correct["mean"] == pytest.approx(-0.5) and correct["verdict"] == "worse"  # the same runs, one story
    report = build_report([*sft, *irft], tmp_path / "report", baseline=sft[0]).read_text()
    assert "| irft (3 seeds) | accuracy | sample_habit ↓ | +0.5 |" in report
    habit_line = next(line for line in report.splitlines() if "| sample_habit ↓ |" in line)
    assert "| worse |" in habit_line and "better" not in habit_line
    table = verdict_table(list(rows.values()))
    assert "| irft (3 seeds) | habit share (lower is better) | +0.500 |" in table
    assert next(line for line in table.splitlines() if "habit share" in line).endswith("| worse |")


def test_an_evaluation_can_declare_its_own_lower_is_better_metric(tmp_path: Path) -> None:
    base, model = tmp_path / "b", tmp_path / "m"
    for folder, habit, lr in ((base, [0.0] * 12, 1e-5), (model, [1.0] * 12, 1e-6)):
        write_accuracy(folder / "eval" / "x", habit, {"lower_is_better": ["sample_correct"]})
        (folder / "config.yaml").write_text(yaml.safe_dump({"method": "sft", "seed": 1, "optim": {"lr": lr}}))
    rows = {r["metric"]: r for r in compare_runs([model], base, ["x"])}
    # sample_correct fell (declared lower-is-better: better); sample_habit rose (lower-is-better: worse).
    assert rows["sample_correct"]["mean"] == -1.0 and rows["sample_correct"]["verdict"] == "better"
    assert rows["sample_habit"]["verdict"] == "worse"


@pytest.mark.parametrize(
    ("model_seeds", "base_seeds", "shown"),
    [(1, 1, "better (1 seed)"), (3, 1, "better (1 seed)"), (2, 3, "better (2 seeds)"), (3, 3, "better")],
)
def test_verdicts_from_fewer_than_three_seeds_are_marked(
    tmp_path: Path, model_seeds: int, base_seeds: int, shown: str
) -> None:
    from rewardsft.demo.run import verdict_table

    base = [write_run(tmp_path, f"sft-s{s}", s, 1e-5, BASE) for s in range(1, base_seeds + 1)]
    model = [write_run(tmp_path, f"irft-s{s}", s, 5e-7, [b + 1 for b in BASE]) for s in range(1, model_seeds + 1)]
    rows = compare_runs([*base, *model], base[0], ["gap"])
    gap = next(r for r in rows if r["metric"] == "gap")
    assert (gap["seeds"], gap["baseline_seeds"]) == (model_seeds, base_seeds)
    assert gap["verdict"] == "better" and gap["verdict_text"] == shown  # the machine word stays bare
    assert f"| [+1, +1] | {shown} |" in differences_markdown(rows, "sft")
    assert next(line for line in verdict_table(rows).splitlines() if "log-prob gap" in line).endswith(f"| {shown} |")


def write_gap(folder: Path, values: list[float], ids: list[str] | None = None, data: str = "pairs.jsonl") -> Path:
    folder.mkdir(parents=True)
    ids = ids or [f"h{i}" for i in range(len(values))]
    mean = sum(values) / len(values)
    stat = {"mean": mean, "ci95": [mean - 1, mean + 1]}
    summary = {"kind": "logprob_gap", "data": data, "gap": stat, "accuracy": stat}
    (folder / "summary.json").write_text(json.dumps(summary))
    with (folder / "per_example.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["row", "pair_id", "gap", "gap_mean", "correct"])
        writer.writeheader()
        for i, (v, pid) in enumerate(zip(values, ids, strict=True)):
            writer.writerow({"row": i + 1, "pair_id": pid, "gap": v, "gap_mean": v / 4, "correct": float(v > 0)})
    return folder


def write_run(root: Path, name: str, seed: int, lr: float, gap: list[float]) -> Path:
    write_gap(root / name / "eval" / "gap", gap)
    return write_config(root / name, seed, lr)


def write_config(run: Path, seed: int, lr: float) -> Path:
    """The run's ``config.yaml``: an IRFT run at ``lr``, ``seed`` (runs equal but for the seed are one method)."""
    config = {"method": "irft", "seed": seed, "output_dir": str(run), "optim": {"lr": lr}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_different_pair_sets_are_refused_naming_the_first_mismatch(tmp_path: Path) -> None:
    a = read_per_example(write_gap(tmp_path / "a", [1.0, 2.0, 3.0], ["x", "y", "z"]))
    b = read_per_example(write_gap(tmp_path / "b", [1.0, 2.0, 3.0], ["x", "q", "z"]))
    with pytest.raises(ConfigError, match=r"first mismatch is example 2: row 2 \(y\) vs row 2 \(q\)"):
        check_aligned(a, b)
    shorter = read_per_example(write_gap(tmp_path / "c", [1.0, 2.0], ["x", "y"]))
    with pytest.raises(ConfigError, match=r"has 3 examples but .* only 2"):
        check_aligned(a, shorter)


def test_seeds_are_grouped_and_their_average_is_compared(tmp_path: Path) -> None:
    base = write_run(tmp_path, "sft", 1, 1e-5, BASE)
    seeds = [write_run(tmp_path, f"irft-s{s}", s, 5e-7, [b + s for b in BASE]) for s in (1, 2, 3)]
    other = write_run(tmp_path, "irft-lr", 1, 1e-6, MODEL)
    groups = group_by_seed([base, *seeds, other])
    assert [len(g.runs) for g in groups] == [1, 3, 1] and groups[1].label == "irft (3 seeds)"
    rows = compare_runs([*seeds, other], base, ["gap"])
    gap_rows = {r["group"]: r for r in rows if r["metric"] == "gap"}
    seeded = gap_rows["irft (3 seeds)"]
    assert seeded["mean"] == pytest.approx(2.0) and seeded["ci95"] == pytest.approx([2.0, 2.0])
    assert seeded["per_seed_mean"] == pytest.approx([1.0, 2.0, 3.0]) and seeded["seed_spread"] == pytest.approx(1.0)
    assert gap_rows["irft-lr"]["mean"] == pytest.approx(sum(MODEL) / 8 - sum(BASE) / 8)
    assert {r["metric"] for r in rows} == {"gap", "gap_mean", "correct"}


def test_a_run_written_before_a_setting_existed_groups_with_one_that_has_it_at_its_default(tmp_path: Path) -> None:
    old = write_run(tmp_path, "irft-s1", 1, 5e-7, BASE)  # its config.yaml lacks train.on_nonfinite
    new = write_run(tmp_path, "irft-s2", 2, 5e-7, BASE)
    config = yaml.safe_load((new / "config.yaml").read_text())
    (new / "config.yaml").write_text(yaml.safe_dump({**config, "train": {"on_nonfinite": "stop"}}))
    assert [len(g.runs) for g in group_by_seed([old, new])] == [2]
    changed = write_run(tmp_path, "irft-s3", 3, 5e-7, BASE)
    (changed / "config.yaml").write_text(yaml.safe_dump({**config, "train": {"on_nonfinite": "skip"}}))
    assert [len(g.runs) for g in group_by_seed([old, new, changed])] == [2, 1]


def test_eval_compare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path, "sft", 1, 1e-5, BASE)
    better = write_run(tmp_path, "irft", 1, 5e-7, [b + 1 for b in BASE])
    assert main(["eval", "compare", str(better), "--baseline", str(base), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| irft | gap | gap | +1 | [+1, +1] | better (1 seed) |" in out
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["baseline"] == "sft" and saved["differences"][0]["verdict"] == "better"
    assert saved["differences"][0]["verdict_text"] == "better (1 seed)" and saved["differences"][0]["seeds"] == 1
    mismatched = write_run(tmp_path, "other", 1, 1e-6, BASE[:5])
    assert main(["eval", "compare", str(mismatched), "--baseline", str(base)]) == 2
    assert "first mismatch is example 6" in capsys.readouterr().err


def test_report_with_a_baseline_has_the_difference_table_and_forest_plot(tmp_path: Path) -> None:
    from rewardsft.eval.report import build_report

    base = write_run(tmp_path, "sft", 1, 1e-5, BASE)
    seeds = [write_run(tmp_path, f"irft-s{s}", s, 5e-7, [b + s for b in BASE]) for s in (1, 2)]
    worse = write_run(tmp_path, "rft", 1, 1e-6, [b - 0.5 for b in BASE])
    report = build_report([base, *seeds, worse], tmp_path / "report", baseline=base)
    markdown = report.read_text()
    assert "## Difference vs baseline" in markdown
    assert "| irft (2 seeds) | gap | gap | +1.5 | [+1.5, +1.5] | better (1 seed) |" in markdown
    assert "| rft | gap | gap | -0.5 | [-0.5, -0.5] | worse (1 seed) |" in markdown
    assert (tmp_path / "report" / "differences.png").is_file()
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Difference vs sft (paired)" in page and "<td>better (1 seed)</td>" in page
