"""Human-likeness read-outs: MAUVE and the out-of-fold discriminator on features with known answers, the logistic
regression against scikit-learn's, and the command end to end on the tiny model with the tiny model as encoder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from rewardsft.cli import main
from rewardsft.eval.human_likeness import (
    LikenessSettings,
    ceiling,
    fit_logistic,
    measure,
    samples_needed,
)
from rewardsft.eval.paired import read_per_example

pytest.importorskip("mauve", reason="pip install 'rewardsft[eval]'")


def cloud(n: int, centre: float, seed: int, dim: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(n, dim, generator=g, dtype=torch.float64) * 0.3
    points[:, 0] += centre
    return torch.nn.functional.normalize(points, dim=-1)


def test_identical_sets_score_the_top_and_far_apart_sets_the_bottom() -> None:
    settings = LikenessSettings(mauve_seeds=2)
    same = cloud(60, 1.0, seed=0)
    top = measure(same, same.clone(), settings)
    assert top["mauve"]["mean"] > 0.99
    # Every point has a twin with the other label, in the same fold: each pair gets one probability, one right.
    assert top["accuracy"]["mean"] == pytest.approx(0.5)
    far = measure(cloud(60, 3.0, seed=1), cloud(60, -3.0, seed=2), settings)
    assert far["mauve"]["mean"] < 0.1
    assert far["accuracy"]["mean"] > 0.95 and far["accuracy"]["ci95"][0] > 0.9
    assert all(p < 0.5 for p in far["human_prob"])  # samples read as not human, each out of fold


def test_unequal_set_sizes_do_not_make_the_same_distribution_look_distinguishable() -> None:
    # 20 samples against 200 references of one distribution: plain accuracy would reward calling everything
    # human (200/220 = 0.91); balanced accuracy stays near chance.
    found = measure(cloud(20, 1.0, seed=8), cloud(200, 1.0, seed=9), LikenessSettings(mauve_seeds=1))
    assert 0.35 <= found["accuracy"]["mean"] <= 0.65
    assert found["accuracy"]["ci95"][0] < 0.5 < found["accuracy"]["ci95"][1]


def test_the_ceiling_is_two_halves_of_the_references() -> None:
    settings = LikenessSettings(mauve_seeds=2)
    refs = cloud(80, 1.0, seed=3)
    top = ceiling(refs, settings)
    assert top["mauve"]["mean"] > 0.8 and 0.3 <= top["accuracy"]["mean"] <= 0.7
    assert "note" in ceiling(refs[:6], settings)


def test_logistic_regression_matches_scikit_learn() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    x = torch.cat([cloud(40, 0.5, seed=4, dim=5), cloud(40, -0.5, seed=5, dim=5)])
    y = torch.cat([torch.ones(40), torch.zeros(40)]).double()
    l2 = 0.05
    ours = fit_logistic(x, y, l2)
    # Ours: mean log-loss + l2·|w|²; scikit-learn: |w|²/2 + C·Σ log-loss, the same minimiser when C = 1/(2·n·l2).
    theirs = linear_model.LogisticRegression(C=1 / (2 * len(x) * l2), tol=1e-10, max_iter=10_000).fit(x, y)
    assert ours[:-1].tolist() == pytest.approx(theirs.coef_[0].tolist(), abs=1e-4)
    assert float(ours[-1]) == pytest.approx(float(theirs.intercept_[0]), abs=1e-4)


def test_samples_needed_by_hand() -> None:
    # 1.96 * sqrt(0.25 / (2n)) = 0.1  ->  n = 1.96² * 0.25 / (2 * 0.01) = 48.02 -> 49
    assert samples_needed(0.1) == 49
    assert samples_needed(0.05) == 193


def write(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_command_end_to_end_and_bad_input_exits_2(
    tmp_path: Path, llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = write(tmp_path / "p.jsonl", [{"prompt": f"Say {w}.", "completion": f"{w} {w}."} for w in "abcdefghij"])
    args = ["eval", "human-likeness", "--model", str(llama_dir), "--prompts", prompts, "--references", prompts]
    args += ["--encoder", str(llama_dir), "--max-new-tokens", "6", "--mauve-seeds", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "10 samples vs 10 references: MAUVE" in capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["kind"] == "human_likeness" and summary["n_samples"] == 10
    low, high = summary["mauve"]["seed_range"]
    assert 0 <= low <= summary["mauve"]["mean"] <= high <= 1
    with (tmp_path / "a" / "per_example.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and all(0 <= float(r["human_prob"]) <= 1 for r in rows)
    # eval compare reads it as per-example values of one metric, higher is better
    per = read_per_example(tmp_path / "a")
    assert list(per.columns) == ["human_prob"] and len(per.keys) == 10

    bad = write(tmp_path / "bad.jsonl", [{"prompt": "x", "completion": "y"}, {"prompt": "x"}])
    assert main([*args[:-6], "--references", bad, "--encoder", str(llama_dir)]) == 2
    assert "bad.jsonl: row 2, field 'completion': missing" in capsys.readouterr().err


def test_the_report_shows_a_human_likeness_evaluation(tmp_path: Path) -> None:
    from rewardsft.eval.report import RunSummary, eval_cells

    summary = {
        "kind": "human_likeness",
        "mauve": {"mean": 0.5, "seed_range": [0.4, 0.6]},
        "discriminator_accuracy": {"mean": 0.7, "ci95": [0.6, 0.8]},
    }
    run = RunSummary("run", tmp_path, {}, [], {"test-likeness": summary})
    assert eval_cells(run) == ["test-likeness: MAUVE 0.5 (seeds 0.4..0.6), discriminator 0.7"]


def test_a_sample_and_its_own_prompts_reference_share_a_fold() -> None:
    from rewardsft.eval.human_likeness import discriminate

    # Each sample is its prompt's reference plus a whisker of noise (a copy and a reversal of one bag of letters
    # embed almost alike). Split apart, a held sample's near-twin is fitted with the other label: below chance.
    refs = cloud(60, 1.0, seed=10)
    g = torch.Generator().manual_seed(11)
    samples = torch.nn.functional.normalize(refs + 1e-3 * torch.randn(refs.shape, generator=g, dtype=refs.dtype))
    settings = LikenessSettings()
    apart = discriminate(samples, refs, settings)["accuracy"]["mean"]
    groups = [f"prompt {i}" for i in range(60)] * 2
    together = discriminate(samples, refs, settings, groups)["accuracy"]["mean"]
    assert apart < 0.35 and 0.4 <= together <= 0.6
