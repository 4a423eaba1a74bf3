"""FSDP2 over two CPU processes (torchrun, gloo) trains like one unsharded process, and checkpoints move between them.

The launch sets what ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` exports
(``ACCELERATE_USE_FSDP``, ``FSDP_VERSION=2``, the block class to wrap); rewardsft then shards the policy with
``fully_shard`` (``rewardsft.sharding``), the code path GPU runs take too. Compared with one process on the same
global batch, as in ``test_distributed.py`` (which compares DDP): per-step metrics, final weights and, for IRFT,
the stage generations, where each stage has an odd number of prompts so the two processes decode different
numbers of batches and the shorter one must run a dummy batch to stay in lockstep (without it the run hangs).

Tolerances: those of ``test_distributed.py`` (1e-5 relative on metrics, 1e-5 absolute on weights). Sharding adds
one more reordering of float sums (gradients are reduce-scattered into shards, the clipping norm is a sum of
per-shard norms); measured on these runs: final weights within 3.1e-7 of the one-process run after moving by
1.2e-2 (SFT), and within the DDP test's bounds for IRFT.

Fast tier: the ten two-process launches take ~2 minutes on 2 cores, and the sharded path is where distributed
training breaks silently (hangs, wrong gradients, unloadable checkpoints), so it is checked on every change.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rewardsft.cli import main
from rewardsft.training.metrics import read_metrics
from tests.integration.test_distributed import (
    LOSS_ABS,
    LOSS_REL,
    STEP_METRICS,
    TORCHRUN,
    WEIGHT_ABS,
    accelerate_launch,
    torchrun,
)
from tests.integration.test_irft import irft_args
from tests.integration.test_rft import rft_args
from tests.integration.test_sft import sft_args

pytestmark = pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="no torchrun")

FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer",
    "OMP_NUM_THREADS": "1",
}
COMMON = ["optim.name=adamw", "optim.lr=2e-3", "train.save_every=3"]
METHOD_ARGS = {
    "sft": ["train.epochs=1"],  # 48 rows, global batch 8: 6 steps
    # 30 rows, 2 stages of 15 prompts: 8 prompts on rank 0 and 7 on rank 1, decoded one at a time.
    "irft": ["data.max_rows=30", "irft.stages=2", "generation.do_sample=false", "generation.batch_size=1"],
}
PORTS = {
    "sft": 29561,
    "irft": 29562,
    "resume": 29563,
    "rft": 29564,
    "ddp": 29565,
    "fsdp": 29566,
    "fsdp_grad_op": 29567,
    "tiny_stage": 29568,
}


def args_for(method: str, model_dir: Path, data: Path, out: Path, batch_size: int, *extra: str) -> list[str]:
    build = sft_args if method == "sft" else irft_args
    return build(model_dir, data, out, *COMMON, *METHOD_ARGS[method], f"train.batch_size={batch_size}", *extra)


def torchrun_fsdp(args: list[str], port: int) -> subprocess.CompletedProcess[str]:
    return torchrun(args, port, FSDP_ENV)


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, llama_dir: Path, builtin_jsonl: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path]:
    """(method, one unsharded process, two FSDP processes), each trained once for the module's tests."""
    method: str = request.param
    base = tmp_path_factory.mktemp(f"fsdp-{method}")
    one, two = base / "one", base / "two"
    assert main(args_for(method, llama_dir, builtin_jsonl, one, batch_size=8)) == 0
    result = torchrun_fsdp(args_for(method, llama_dir, builtin_jsonl, two, batch_size=4), PORTS[method])
    assert result.returncode == 0, result.stderr[-3000:]
    return method, one, two


def step_records(out: Path, key: str) -> list[dict[str, Any]]:
    return [r for r in read_metrics(out / "metrics.jsonl") if key in r]


@pytest.mark.parametrize("runs", ["sft", "irft"], indirect=True)
def test_fsdp_matches_one_process(runs: tuple[str, Path, Path], llama_dir: Path) -> None:
    method, one, two = runs
    assert json.loads((two / "run.json").read_text())["sharding"] == "fsdp2"
    key = STEP_METRICS[method][0]
    single, double = step_records(one, key), step_records(two, key)
    assert [r["step"] for r in single] == [r["step"] for r in double] and len(single) >= 4
    mismatches = [
        f"step {a['step']} {k}: one process {a[k]!r}, FSDP {b[k]!r}"
        for a, b in zip(single, double, strict=True)
        for k in STEP_METRICS[method]
        if b[k] != pytest.approx(a[k], rel=LOSS_REL, abs=LOSS_ABS)
    ]
    assert mismatches == []
    initial = load_file(str(llama_dir / "model.safetensors"))
    a, b = (load_file(str(run / "final" / "model.safetensors")) for run in (one, two))
    assert a.keys() == b.keys() == initial.keys()
    assert max(float((a[n] - initial[n]).abs().max()) for n in a) > 100 * WEIGHT_ABS
    assert {n: d for n in a if (d := float((a[n] - b[n]).abs().max())) > WEIGHT_ABS} == {}
    # The sharded run's export is a plain model that loads on its own.
    assert AutoModelForCausalLM.from_pretrained(str(two / "final")).num_parameters() > 0


@pytest.mark.parametrize("runs", ["irft"], indirect=True)
def test_fsdp_generations_match(runs: tuple[str, Path, Path]) -> None:
    _, one, two = runs
    for k in (1, 2):
        name = f"stages/stage-{k}/generations.jsonl"
        assert len((one / name).read_text().splitlines()) == 15
        assert (two / name).read_text() == (one / name).read_text()


def rewind(src: Path, dst: Path, step: int) -> Path:
    """A copy of a finished run as it was right after checkpoint ``step`` (later checkpoints and final/ gone)."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "final")
    for folder in (dst / "checkpoints").iterdir():
        if folder.name != f"step-{step}":
            shutil.rmtree(folder)
    return dst


@pytest.mark.parametrize("runs", ["sft", "irft"], indirect=True)
def test_resume_across_process_counts(
    runs: tuple[str, Path, Path], llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """An FSDP checkpoint (optimiser state keyed by name, gathered) resumes on one unsharded process, and a
    one-process checkpoint (keyed by position) resumes sharded over two: both end on the uninterrupted weights.
    For IRFT step 3 is inside stage 2, so the resumed run reuses that stage's generations and snapshot cache (the
    two-process resume reads the one-process run's rank-0 cache)."""
    method, one, two = runs
    key = STEP_METRICS[method][0]
    reference = load_file(str(one / "final" / "model.safetensors"))
    sharded_to_plain = rewind(two, tmp_path / "a", step=3)
    assert main([*args_for(method, llama_dir, builtin_jsonl, sharded_to_plain, 8), "resume=true"]) == 0
    plain_to_sharded = rewind(one, tmp_path / "b", step=3)
    args = [*args_for(method, llama_dir, builtin_jsonl, plain_to_sharded, 4), "resume=true"]
    result = torchrun_fsdp(args, PORTS["resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    for out in (sharded_to_plain, plain_to_sharded):
        final = load_file(str(out / "final" / "model.safetensors"))
        assert {n: d for n in final if (d := float((final[n] - reference[n]).abs().max())) > WEIGHT_ABS} == {}
        assert [r["step"] for r in step_records(out, key)] == [r["step"] for r in step_records(one, key)]
    if method == "irft":
        assert "reusing" in result.stdout + result.stderr  # the stage's generations were not sampled again


@pytest.mark.parametrize("runs", ["sft"], indirect=True)
def test_resume_with_another_global_batch_is_refused(
    runs: tuple[str, Path, Path], llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, _, two = runs
    out = rewind(two, tmp_path / "c", step=3)
    assert main([*args_for("sft", llama_dir, builtin_jsonl, out, 4), "resume=true"]) == 2
    err = capsys.readouterr().err
    assert "global batch of 8" in err and "this run's is 4" in err
    assert (out / "checkpoints" / "step-3" / "state.json").is_file()  # nothing lost


def test_a_stage_with_fewer_pairs_than_processes(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    """Two stages of one pair each: process 1 has no pair of its own to take the snapshot of, yet must run the
    snapshot pass's collective forward (its dummy batch used to come from its own, empty share: collate raised and
    process 0 waited in the collective). Its snapshot cache must equal one process's."""
    extra = ["data.max_rows=2", "irft.stages=2", "generation.do_sample=false", "train.batch_size=1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(irft_args(llama_dir, builtin_jsonl, one, *COMMON, *extra)) == 0
    result = torchrun_fsdp(irft_args(llama_dir, builtin_jsonl, two, *COMMON, *extra), PORTS["tiny_stage"])
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("stage-1", "stage-2"):
        cache = [torch.load(run / "stages" / stage / "ref_logps.rank0.pt") for run in (one, two)]
        assert cache[0].shape == (1, 2)
        torch.testing.assert_close(cache[1], cache[0], rtol=LOSS_REL, atol=1e-4)


def test_rft_runs_sharded(llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path) -> None:
    """RFT with its policy sharded (reward model and reference replicated): 4 prompts x 2 samples per process in
    micro-batches of 3; the held-out split (9 prompts) splits 5/4, so its generation needs the lockstep. Every
    policy weight moves and the exports load. (Rounds that do not split evenly are refused: test_sharding.py.)"""
    out = tmp_path / "rft"
    args = rft_args(llama_dir, split_data, out, "rft.iterations=3", "rft.prompts_per_iteration=8", "train.batch_size=3")
    result = torchrun_fsdp(args, PORTS["rft"])
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "rm/loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "eval/rm_accuracy" in r] == [0, 3]
    initial = load_file(str(llama_dir / "model.safetensors"))
    final = load_file(str(out / "final" / "model.safetensors"))
    assert [n for n in initial if torch.equal(initial[n], final[n])] == []
    assert (out / "reward_model" / "model.safetensors").is_file()


@pytest.mark.parametrize(("name", "sharding"), [("ddp", "none"), ("fsdp", "fsdp2"), ("fsdp_grad_op", "fsdp2")])
def test_shipped_accelerate_configs_launch(
    name: str, sharding: str, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """``accelerate launch --config_file configs/accelerate/<name>.yaml --num_processes 2`` as the README writes it
    (on CPU the GPU configs fall back to gloo): two processes, sharded or not as the file says, a loadable final/."""
    out = tmp_path / name
    args = sft_args(llama_dir, builtin_jsonl, out, "train.batch_size=4", "train.max_steps=2")
    result = accelerate_launch(name, PORTS[name], args)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert (run["world_size"], run["sharding"]) == (2, sharding)
    assert AutoModelForCausalLM.from_pretrained(str(out / "final")).num_parameters() > 0
