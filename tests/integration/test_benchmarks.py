"""The benchmark scripts call recipe internals directly: a tiny smoke run keeps them working (no timings checked,
only that every number is there, finite and positive)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def test_irft_step_benchmark_runs_on_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    methods = "irft_cached,irft_cached_joint,irft_shared,rft_round,rft_round_shared"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "irft_step.py"), "--size", "tiny", "--steps", "1"]
    result = subprocess.run(
        [*cmd, "--methods", methods, "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert {m: "error" in r for m, r in results.items()} == dict.fromkeys(methods.split(","), False)
    assert all(r["median_step_s"] > 0 for r in results.values())


def run_module(name: str, out: Path, *extra: str) -> dict[str, Any]:
    """``python -m benchmarks.NAME --size tiny --out OUT`` from the repository root; the JSON it wrote."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--size", "tiny", "--out", str(out), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_generation_speed_benchmark_runs_on_a_tiny_model(tmp_path: Path) -> None:
    report = run_module("generation_speed", tmp_path / "gen.json")
    variants = {(r["variant"], r["batch"]) for r in report["results"]}
    names = ("ours", "plain", "plain_static", "ours_static", "ours_eager", "ours_bf16")
    assert variants == {(v, b) for v in names for b in (1, 2)}
    for row in report["results"]:
        assert all(positive(row[k]) for k in ("tokens_per_s", "bound_tokens_per_s", "vs_plain", "vs_bound"))
    assert positive(report["bandwidth"]["bytes_per_s"]) and positive(report["bound_steps_per_s"]["float32"])
    assert all(positive(report["bucketing"][k]["tokens_per_s"]) for k in ("sorted", "unsorted"))
    kl = report["bf16_kl"]["random"]
    assert math.isfinite(kl["kl_mean"]) and kl["kl_mean"] >= 0 and 0 <= kl["top1_agreement"] <= 1
    assert "skipped" in report["plain_compiled"] and report["decode_profile_b1"][0]["self_cpu_share"] > 0


def test_mfu_benchmark_runs_on_a_tiny_model(tmp_path: Path) -> None:
    report = run_module("mfu", tmp_path / "mfu.json")
    assert positive(report["peak"]["flops_per_s"]) and positive(report["flops_per_token"]["total"])
    assert set(report["results"]) == {"sft", "irft_cached", "irft_cached_joint"}
    for r in report["results"].values():
        assert all(positive(r[k]) for k in ("median_step_s", "achieved_flops_per_s", "mfu", "hfu"))
        assert r["top_ops"] and 0 < r["matmul_share"] <= 1
    # IRFT trains two sequences per example, SFT one.
    assert report["results"]["irft_cached"]["tokens_per_step"] == 2 * report["results"]["sft"]["tokens_per_step"]


# The cost curves start a CLI process per point (~4 s each on a tiny model): two tests of three runs each.
def test_cost_curves_of_irft_through_the_cli(tmp_path: Path) -> None:
    report = run_module("cost_curves", tmp_path / "cost.json", "--parts", "a,b")
    a = report["a_irft_stage_vs_rows"]
    assert set(a["runs"]) == {"8", "16"} and math.isfinite(a["fit_stages_s"]["slope"])
    for run in [*a["runs"].values(), *report["b_irft_total_vs_stages"]["runs"].values()]:
        assert all(positive(run[k]) for k in ("wall_s", "startup_s", "generation_s", "train_s", "stages_s"))
    assert report["b_irft_total_vs_stages"]["runs"]["1"]["reused"]  # the largest point of (a)
    assert report["b_irft_total_vs_stages"]["runs"]["2"]["stages"] == 2


def test_cost_curves_of_rft_and_two_processes_through_the_cli(tmp_path: Path) -> None:
    report = run_module("cost_curves", tmp_path / "cost.json", "--parts", "c,d")
    assert all(positive(r["median_round_s"]) for r in report["c_rft_round_vs_samples"]["runs"].values())
    one, two = report["d_processes"]["one_process_omp2_batch8"], report["d_processes"]["two_processes_omp1_batch4"]
    assert len(two["peak_rss_mb"]["trainer"]) == 2 and all(positive(mb) for mb in two["peak_rss_mb"]["trainer"])
    assert positive(one["peak_rss_mb"]["trainer"][0]) and positive(one["wall_s"]) and positive(two["wall_s"])


def test_packing_benchmark_runs_on_a_tiny_model(tmp_path: Path) -> None:
    report = run_module("packing", tmp_path / "packing.json", "--steps", "2")
    result = report["results"]["builtin"]
    padded, packed = result["padded"], result["packed"]
    assert padded["tokens"] == packed["tokens"] and packed["rows"] <= padded["rows"]
    assert 0 <= packed["padding_share"] <= padded["padding_share"] < 1
    assert all(positive(r[k]) for r in (padded, packed) for k in ("median_step_s", "tokens_per_s"))


def test_eval_gap_speed_benchmark_runs_on_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "gap.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "eval_gap_speed.py"), "--pairs", "12", "--batch-size", "4"]
    result = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["pairs"] == 12 and positive(report["seconds_shared"]) and positive(report["seconds_separate"])
    assert report["gap_mean_difference"] < 1e-4  # the two layouts read the same log-probs


def test_continuous_batching_benchmark_runs_on_a_tiny_model(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cb.json"
    cmd = [sys.executable, "-m", "benchmarks.continuous_batching", "--model", str(llama_dir), "--prompts", "3"]
    cmd += ["--new-tokens", "4", "--repeats", "1", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert positive(record["hf_generate_s"]) and positive(record["continuous_batching_s"])
    assert 0.0 <= record["same_greedy_tokens"] <= 1.0


def test_engine_memory_benchmark_runs_on_a_tiny_model(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    cmd = [sys.executable, "-m", "benchmarks.engine_memory", "--model", str(llama_dir), "--steps", "1"]
    cmd += ["--engines", "plain (1 process),DDP", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [len(r["peak_mb_per_process"]) for r in results.values()] == [1, 2]
    assert all(positive(r["max_peak_mb"]) for r in results.values())
