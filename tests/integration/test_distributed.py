"""Two processes (torchrun, gloo, CPU) train exactly like one process on the same global batch.

One process with ``train.batch_size=8`` against two with ``train.batch_size=4`` each: the data planner gives
rank r every world_size-th example of the same global micro-batch of 8, so both runs see the same examples
at every step, and DDP's gradient mean over the two ranks must reproduce the one-process gradient. Compared:
the per-step metrics in ``metrics.jsonl``, the final weights and, for IRFT, the stage generations.

Tolerances. Float32 sums are not associative: the two-process gradient is (g_0 + g_1) / 2 all-reduced by gloo,
the one-process gradient one sum over the 8 rows, and the padded shapes differ (batches of 4 vs 8, which also
changes the snapshot cache of stage 2 by ~8e-6). Measured on the IRFT run below (adamw lr 2e-3, 4 steps):
logged losses and grad norms agree to ≤ 2e-7 relative, the margin to ≤ 1.2e-6 relative (~1e-7 absolute),
the final weights to ≤ 7e-7 absolute while training moved them by up to 5e-3 (with all 48 rows and 6 steps:
margin ≤ 2.6e-6 relative, weights ≤ 1.5e-6). So metrics use 1e-5 relative (plus 1e-6 absolute for values at
0, such as the margin at a stage start) and weights 1e-5 absolute: several times the measured reduction-order
noise, and 500x below the weight movement, so a real difference in the gradient cannot hide in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from rewardsft.cli import main
from rewardsft.training.metrics import read_metrics
from tests.integration.test_irft import irft_args
from tests.integration.test_rft import rft_args
from tests.integration.test_sft import sft_args

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None and not TORCHRUN.exists(), reason="torchrun not found")

LOSS_REL, LOSS_ABS, WEIGHT_ABS = 1e-5, 1e-6, 1e-5
COMMON = ["optim.name=adamw", "optim.lr=2e-3"]
PORTS = {"sft": 29547, "irft": 29548, "irft-shared": 29549}
METHOD_ARGS = {
    # 48 rows, global batch 8: 6 steps per epoch.
    "sft": ["train.epochs=2"],
    # The first 32 rows, 2 stages of 16 pairs, global batch 8: 2 steps per stage. Greedy, because sampling
    # seeds differ per rank. generation.batch_size=1 decodes every prompt on its own in both runs, so no
    # prompt's tensors depend on which other prompts share its batch (left padding, shapes): the generations
    # are then bit-identical whenever the weights are. (With batches of 24 they matched too when measured, but
    # 24 prompts in one batch vs 12 per rank is different float arithmetic, and greedy decoding on a tiny
    # random model, whose top logits are close, can flip on such differences.)
    "irft": ["data.max_rows=32", "irft.stages=2", "generation.do_sample=false", "generation.batch_size=1"],
}
# The shared-prefix pair rows, packed (issue 23), under DDP: the same as one process too.
METHOD_ARGS["irft-shared"] = [*METHOD_ARGS["irft"], "irft.pair_forward=shared", "train.packing=true"]
STEP_METRICS = {
    "sft": ["train/loss", "train/grad_norm", "train/tokens"],
    "irft": ["irft/loss", "irft/margin", "train/grad_norm"],
    "irft-shared": ["irft/loss", "irft/margin", "train/grad_norm"],
}

# Before f8f990e SFT failed both checks: it logged rank 0's local loss and token count (step 1: train/loss
# 6.239498 vs 6.240789 one-process, train/tokens 34 vs 70), and normalised each rank's NLL by that rank's own
# token count, so DDP averaged two per-rank means (final weights differed by up to 9.2e-3 after moving 1.3e-2).


def args_for(method: str, model_dir: Path, data: Path, out: Path, batch_size: int) -> list[str]:
    build = sft_args if method == "sft" else irft_args
    return build(model_dir, data, out, *COMMON, *METHOD_ARGS[method], f"train.batch_size={batch_size}")


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, llama_dir: Path, builtin_jsonl: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path]:
    """(method, one-process run dir, two-process run dir), each trained once for the module's tests."""
    method: str = request.param
    base = tmp_path_factory.mktemp(f"dist-{method}")
    one, two = base / "one", base / "two"
    assert main(args_for(method, llama_dir, builtin_jsonl, one, batch_size=8)) == 0
    result = torchrun(args_for(method, llama_dir, builtin_jsonl, two, batch_size=4), PORTS[method])
    assert result.returncode == 0, result.stderr[-3000:]
    return method, one, two


def torchrun(args: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``rewardsft.cli`` with ``args`` in two torchrun processes (one thread each), plus ``env``."""
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(port), "-m", "rewardsft.cli", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=full_env)


def step_records(out: Path, key: str) -> list[dict[str, Any]]:
    return [r for r in read_metrics(out / "metrics.jsonl") if key in r]


@pytest.mark.parametrize("runs", ["sft", "irft", "irft-shared"], indirect=True)
def test_same_metrics_every_step(runs: tuple[str, Path, Path]) -> None:
    method, one, two = runs
    keys = STEP_METRICS[method]
    single, double = step_records(one, keys[0]), step_records(two, keys[0])
    assert [r["step"] for r in single] == [r["step"] for r in double] == list(range(1, 13 if method == "sft" else 5))
    assert mismatches(single, double, keys, "two processes") == []


def mismatches(single: list[dict[str, Any]], double: list[dict[str, Any]], keys: list[str], label: str) -> list[str]:
    """Each logged value of ``keys`` where the two runs differ beyond the tolerances above, step by step."""
    return [
        f"step {a['step']} {key}: one process {a[key]!r}, {label} {b[key]!r}"
        for a, b in zip(single, double, strict=True)
        for key in keys
        if b[key] != pytest.approx(a[key], rel=LOSS_REL, abs=LOSS_ABS)
    ]


def accelerate_launch(config_name: str, port: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``accelerate launch --config_file configs/accelerate/<config_name>.yaml --num_processes 2 -m rewardsft.cli
    ARGS`` as the README writes it, in a clean environment (no FSDP_/ACCELERATE_ variables of the test run)."""
    accelerate = TORCHRUN.with_name("accelerate")
    config = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / f"{config_name}.yaml"
    cmd = [str(accelerate), "launch", "--config_file", str(config), "--num_processes", "2"]
    cmd += ["--main_process_port", str(port), "-m", "rewardsft.cli", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSDP_", "ACCELERATE_"))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("runs", ["sft", "irft", "irft-shared"], indirect=True)
def test_same_final_weights(runs: tuple[str, Path, Path], llama_dir: Path) -> None:
    _, one, two = runs
    initial = load_file(str(llama_dir / "model.safetensors"))
    single = load_file(str(one / "final" / "model.safetensors"))
    double = load_file(str(two / "final" / "model.safetensors"))
    assert single.keys() == double.keys() == initial.keys()
    moved = max(float((single[n] - initial[n]).abs().max()) for n in initial)
    assert moved > 100 * WEIGHT_ABS  # the comparison below is not trivially satisfied
    diffs = {n: float((single[n] - double[n]).abs().max()) for n in single}
    assert {n: d for n, d in diffs.items() if d > WEIGHT_ABS} == {}  # tensors whose max abs difference is over


@pytest.mark.parametrize("runs", ["irft"], indirect=True)
def test_same_generations(runs: tuple[str, Path, Path]) -> None:
    _, one, two = runs
    for k in (1, 2):
        name = f"stages/stage-{k}/generations.jsonl"
        single, double = (one / name).read_text(), (two / name).read_text()
        assert len(single.splitlines()) == 16
        assert double == single


def test_rft_runs_in_two_processes(llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path) -> None:
    """RFT samples per process (its rounds cannot match one process sample for sample), so this checks that the
    cross-process pieces run and agree: the round's whitening moments, the reward model's gradient mean, the
    held-out accuracy and the metric reduction, with one record per round written once."""
    out = tmp_path / "rft"
    args = rft_args(llama_dir, split_data, out, "rft.iterations=3", "rft.prompts_per_iteration=8")
    result = torchrun(args, 29549)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "rm/loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "eval/rm_accuracy" in r] == [0, 3]
    assert (out / "reward_model" / "model.safetensors").is_file() and (out / "final" / "model.safetensors").is_file()
    # train/tokens is a count, summed over processes (it was averaged: 1 process logged 462, 2 processes 231 and
    # 224). The samples differ by process, the demonstrations do not: a one-process run of the same rounds gives
    # the demonstrations' tokens, and gen/mean_length (a mean of equal shares) each run's sampled tokens.
    single = tmp_path / "rft-one"
    assert main(rft_args(llama_dir, split_data, single, "rft.iterations=3", "rft.prompts_per_iteration=8")) == 0
    samples = 8 * 2  # prompts x samples_per_prompt; one reward step and one policy step per round (the defaults)
    for one, two in zip(read_metrics(single / "metrics.jsonl"), records, strict=True):
        if "train/tokens" not in one:
            continue
        demo_tokens = one["train/tokens"] - 2 * one["gen/mean_length"] * samples
        assert demo_tokens > 0
        assert two["train/tokens"] == pytest.approx(demo_tokens + 2 * two["gen/mean_length"] * samples, rel=1e-9)
