"""The benchmark scripts call recipe internals directly: a tiny smoke run keeps them working (no timings here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_irft_step_benchmark_runs_on_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    methods = "irft_cached,irft_cached_joint,rft_round"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "irft_step.py"), "--size", "tiny", "--steps", "1"]
    result = subprocess.run(
        [*cmd, "--methods", methods, "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert {m: "error" in r for m, r in results.items()} == dict.fromkeys(methods.split(","), False)
    assert all(r["median_step_s"] > 0 for r in results.values())
