"""DeepSpeed ZeRO-2 and ZeRO-3 over two torchrun processes (gloo, CPU) train like one plain process.

The same comparison and tolerances as tests/integration/test_distributed.py (its docstring measures them): one
process with ``train.batch_size=8`` against two with 4 each see the same examples at every step, so the per-step
metrics and the final weights must agree within float reduction-order noise. Measured when this was written
(2026-12-01): SFT and IRFT (split and shared pair forwards) under ZeRO-2 and ZeRO-3 agree with one process to
≤ 4.1e-7 relative in losses and grad norms and ≤ 3.9e-6 absolute in the final weights (IRFT moved them by ~1e-2).
A ZeRO-3 IRFT run cut back to an earlier checkpoint resumes to the uninterrupted run's weights exactly.

RFT samples with per-rank seeds, so its two-process run is not one process's; it is checked to train every
parameter under both stages and to log the same rounds under ZeRO-2 and ZeRO-3 (the same samples, the same
arithmetic but for the partitioning).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rewardsft.cli import main
from tests.integration.test_distributed import (
    COMMON,
    METHOD_ARGS,
    STEP_METRICS,
    TORCHRUN,
    WEIGHT_ABS,
    accelerate_launch,
    args_for,
    mismatches,
    step_records,
    torchrun,
)
from tests.integration.test_rft import rft_args
from tests.integration.test_sft import sft_args

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"),
    pytest.mark.skipif(shutil.which("torchrun") is None and not TORCHRUN.exists(), reason="torchrun not found"),
]
# (case, ZeRO stage). The cases beyond test_distributed.py's methods: "sft-accum" accumulates two micro-batches
# per step in each process (one process: one micro-batch of 8), "irft-reset" builds a fresh optimiser per stage
# (irft.reset_optimizer_each_stage, which DeepSpeed does by emptying the optimiser's state).
CASES = [("sft", 2), ("sft", 3), ("sft-accum", 3), ("irft", 2), ("irft", 3), ("irft-shared", 3), ("irft-reset", 3)]
CASES += [("irft-lockstep", 3)]
VARIANTS = {
    "sft-accum": ("sft", ["train.grad_accum=2"], []),
    # ZeRO-3 samples from gathered weights by default; lockstep decoding (every token a collective) is the other way.
    "irft-lockstep": ("irft", ["generation.zero3_gather=false"], []),
    "irft-reset": ("irft", ["irft.reset_optimizer_each_stage=true"], ["irft.reset_optimizer_each_stage=true"]),
}
"""case: (method, settings of the two-process run, settings of the one-process run)."""
# A port of its own for every launch (a port just released by the previous launch is not reused).
PORTS = {f"{m}-{s}": 29571 + i for i, (m, s) in enumerate(CASES)} | {"rft": 29585, "resume": 29588}
LAUNCH_PORTS = {"zero2": 29592, "zero3": 29593, "zero3_offload": 29594}


def zero(stage: int) -> dict[str, str]:
    """The launch environment of ZeRO-``stage``. ZeRO-3 through a DeepSpeed JSON that partitions every parameter:
    DeepSpeed keeps those under ``stage3_param_persistence_threshold`` (1e5 elements) whole in every process,
    which is all of the tiny test model's, so ZeRO-3 would partition nothing (found 2026-12-02: LoRA's adapter
    export wrote empty tensors only once every parameter was partitioned). The accelerate-config path is
    test_shipped_deepspeed_configs_launch's."""
    if stage == 2:
        return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
    path = Path(tempfile.gettempdir()) / "rewardsft-tests-zero3-partition-all.json"
    content = json.dumps({"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}})
    if not path.is_file() or path.read_text() != content:  # written whole, never a stale or torn file
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(content)
        tmp.replace(path)
    return {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(path)}


def case_args(case: str, model: Path, data: Path, out: Path, processes: int) -> list[str]:
    """One process with a batch of 8, or two with 4 each (2 x 2 micro-batches for sft-accum)."""
    method, two, one = VARIANTS.get(case, (case, [], []))
    batch = 8 if processes == 1 else (2 if case == "sft-accum" else 4)
    return [*args_for(method, model, data, out, batch_size=batch), *(one if processes == 1 else two)]


@pytest.fixture(scope="module")
def one_process(llama_dir: Path, builtin_jsonl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each case trained once in one plain process (the reference of every stage)."""
    base = tmp_path_factory.mktemp("ds-one")
    runs = {}
    for case in dict.fromkeys(c for c, _ in CASES):
        runs[case] = base / case
        if case in ("sft-accum", "irft-lockstep"):
            runs[case] = runs[case.split("-")[0]]  # the same one-process run: neither may change the step
            continue
        assert main(case_args(case, llama_dir, builtin_jsonl, runs[case], processes=1)) == 0
    return runs


@pytest.mark.parametrize(("case", "stage"), CASES, ids=[f"{c}-zero{s}" for c, s in CASES])
def test_zero_trains_like_one_process(
    case: str,
    stage: int,
    one_process: dict[str, Path],
    llama_dir: Path,
    builtin_jsonl: Path,
    tmp_path: Path,
) -> None:
    two = tmp_path / "two"
    result = torchrun(
        case_args(case, llama_dir, builtin_jsonl, two, processes=2), PORTS[f"{case}-{stage}"], zero(stage)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (two / "run.json").read_text().count(f'"engine": "deepspeed-zero{stage}"') == 1
    # Which way ZeRO-3 sampled: from gathered weights by default, per layer in lockstep when told.
    gathered = "sampling from the whole weights" in result.stdout
    assert gathered == (stage == 3 and case.startswith("irft") and case != "irft-lockstep")
    keys, one = STEP_METRICS[VARIANTS.get(case, (case,))[0]], one_process[case]
    single, double = step_records(one, keys[0]), step_records(two, keys[0])
    assert [r["step"] for r in single] == [r["step"] for r in double] and len(single) >= 4
    assert mismatches(single, double, keys, f"zero-{stage}") == []
    assert_same_weights(one / "final", two / "final", llama_dir)
    # Checkpoints: whole weights beside DeepSpeed's own optimiser shards, one per process.
    last = sorted((two / "checkpoints").glob("step-*"))[-1]
    assert (last / "model" / "model.safetensors").is_file()
    assert len(list((last / "deepspeed").glob("*optim_states.pt"))) == 2


def assert_same_weights(a: Path, b: Path, start: Path) -> None:
    initial = load_file(str(start / "model.safetensors"))
    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert left.keys() == right.keys() == initial.keys()
    assert max(float((left[n] - initial[n]).abs().max()) for n in initial) > 100 * WEIGHT_ABS
    assert {
        n: float((left[n] - right[n]).abs().max()) for n in left if (left[n] - right[n]).abs().max() > WEIGHT_ABS
    } == {}


def test_a_zero3_irft_run_resumes_to_the_uninterrupted_weights(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """Cut back to the checkpoint inside stage 2 (its snapshot cache and DeepSpeed's optimiser shards), then
    resumed: the same metrics and final weights as the run that was never cut."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = [*METHOD_ARGS["irft"], "train.batch_size=4", "train.save_every=1", "train.keep_checkpoints=5"]
    result = torchrun(irft_args_of(llama_dir, builtin_jsonl, whole, args), PORTS["resume"], zero(3))
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step-4")
    result = torchrun(
        irft_args_of(llama_dir, builtin_jsonl, cut, [*args, "resume=true"]), PORTS["resume"] + 10, zero(3)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    assert timeless(step_records(cut, "irft/loss")) == timeless(step_records(whole, "irft/loss"))
    left, right = (load_file(str(path / "final" / "model.safetensors")) for path in (whole, cut))
    assert all(bool((left[n] == right[n]).all()) for n in left)
    # On another number of processes, or without DeepSpeed, the shards cannot be read: a clear error, exit 2.
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step-4")
    assert main(irft_args_of(llama_dir, builtin_jsonl, cut, [*args[:-3], "train.batch_size=8", "resume=true"])) == 2


@pytest.mark.slow  # 40 s; the fast tier keeps the cut-back resume and the SIGTERM-in-a-save test under ZeRO-3
def test_a_sigkilled_zero3_irft_run_resumes_to_the_uninterrupted_weights(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """Both processes SIGKILLed (the process group, as a preempted job is) once the checkpoint of step 2 (the end
    of stage 1) is complete, while stage 2 samples (generation stretched by tests/reliability/slow_phases.py so the
    kill lands mid-run); the resumed run ends on the uninterrupted run's weights bit for bit."""
    import signal
    import time

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = [*METHOD_ARGS["irft"], "train.batch_size=4", "train.save_every=1", "train.keep_checkpoints=5"]
    result = torchrun(irft_args_of(llama_dir, builtin_jsonl, whole, args), PORTS["resume"] + 20, zero(3))
    assert result.returncode == 0, result.stderr[-3000:]
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(PORTS["resume"] + 30)]
    cmd += ["-m", "tests.reliability.slow_phases", *irft_args_of(llama_dir, builtin_jsonl, killed, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **zero(3)}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "step-2" / "state.json").is_file() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    result = torchrun(
        irft_args_of(llama_dir, builtin_jsonl, killed, [*args, "resume=true"]), PORTS["resume"] + 40, zero(3)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    left, right = (load_file(str(path / "final" / "model.safetensors")) for path in (whole, killed))
    assert all(bool((left[n] == right[n]).all()) for n in left)


def test_a_sigterm_to_one_zero3_process_during_a_save_stops_both_and_the_run_resumes(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """SIGTERM reaches rank 1 alone while the checkpoint of step 2 is being written (tests/reliability/
    signal_in_save.py): both processes stop after that save, saying so; resumed under ZeRO-3 from it, the run ends
    on the uninterrupted run's weights bit for bit."""
    import os

    run, whole = tmp_path / "run", tmp_path / "whole"
    steps = ["train.max_steps=6", "train.save_every=2", "train.batch_size=4"]
    cmd = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(PORTS["resume"] + 50)]
    cmd += ["-m", "tests.reliability.signal_in_save", *sft_args(llama_dir, builtin_jsonl, run, *steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **zero(3)}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0, result.stderr[-3000:]
    assert result.stderr.count("rewardsft: stopped by SIGTERM after step 2") == 2, result.stderr[-3000:]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-2"] and not (run / "final").exists()
    resumed = torchrun(sft_args(llama_dir, builtin_jsonl, run, *steps, "resume=true"), PORTS["resume"] + 60, zero(3))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = torchrun(sft_args(llama_dir, builtin_jsonl, whole, *steps), PORTS["resume"] + 70, zero(3))
    assert result.returncode == 0, result.stderr[-3000:]
    left, right = (load_file(str(path / "final" / "model.safetensors")) for path in (whole, run))
    assert all(bool((left[n] == right[n]).all()) for n in left)


def timeless(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in r.items() if not key.startswith("time/")} for r in records]


def irft_args_of(model: Path, data: Path, out: Path, extra: list[str]) -> list[str]:
    from tests.integration.test_irft import irft_args

    return irft_args(model, data, out, *COMMON, *extra)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_rft_under_zero2_and_zero3_trains_as_ddp_does(
    lora: bool, llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """RFT samples with per-rank seeds, so its reference is two DDP processes (the same samples, whole models):
    the same rounds under ZeRO-2 and ZeRO-3, every parameter trained (with LoRA: under ZeRO-3 only, every
    adapter parameter, the frozen reference being the policy with its adapter off)."""
    records: dict[str, list[dict[str, Any]]] = {}
    engines = ("ddp", "zero3") if lora else ("ddp", "zero2", "zero3")
    for k, engine in enumerate(engines):
        out = tmp_path / engine
        args = rft_args(
            llama_dir, split_data, out, "rft.iterations=3", "rft.prompts_per_iteration=8", "train.batch_size=3"
        )
        args += ["lora.enabled=true", "lora.r=4"] if lora else []
        port = PORTS["rft"] + k + (10 if lora else 0)
        result = torchrun(args, port, zero(int(engine[-1])) if engine != "ddp" else None)
        assert result.returncode == 0, result.stderr[-3000:]
        records[engine] = step_records(out, "rm/loss")
        initial = load_file(str(llama_dir / "model.safetensors"))
        final = load_file(str(out / "final" / "model.safetensors"))
        adapted = set(initial)
        if lora:  # every adapter matrix trained, and merged into the weight it adapts (the rest stay as they were)
            adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
            assert [n for n, t in adapter.items() if "lora_B" in n and not bool(t.abs().gt(0).any())] == []
            adapted = {n.removeprefix("base_model.model.").split(".lora_")[0] + ".weight" for n in adapter}
        assert {n for n in initial if not bool((initial[n] == final[n]).all())} == adapted
        assert (out / "reward_model" / "model.safetensors").is_file()
    assert [r["step"] for r in records["ddp"]] == [1, 2, 3]
    for engine in engines[1:]:
        for a, b in zip(records["ddp"], records[engine], strict=True):
            for key in ("rm/loss", "policy/reward", "policy/kl", "train/grad_norm"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (engine, key)


@pytest.mark.parametrize(("stage", "mode"), [(2, "stop"), (3, "skip")])
def test_a_nonfinite_gradient_meets_on_nonfinite(
    stage: int, mode: str, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """A learning rate of 1e30 makes every step after the first non-finite: DeepSpeed measures the norm inside its
    step and leaves the weights; ``stop`` ends the run naming it, ``skip`` counts each skipped step."""
    out = tmp_path / "run"
    args = sft_args(llama_dir, builtin_jsonl, out, "train.batch_size=4", "train.max_steps=4", "optim.lr=1e30")
    result = torchrun([*args, f"train.on_nonfinite={mode}"], 29596 + stage, zero(stage))
    if mode == "stop":
        assert result.returncode != 0 and "did not apply the step" in result.stdout + result.stderr
        return
    assert result.returncode == 0, result.stderr[-3000:]
    rows = step_records(out, "train/grad_norm")
    assert [r.get("train/nonfinite_skipped", 0.0) for r in rows] == [0.0, 1.0, 1.0, 1.0]


LORA = ["lora.enabled=true", "lora.r=4", "lora.alpha=8", "optim.lr=1e-2"]
NO_DROPOUT = {"sft": ["lora.dropout=0"], "irft": []}
"""Each process draws its own dropout masks, so with dropout the runs could not agree (IRFT turns it off)."""


@pytest.mark.parametrize(("method", "stage"), [("sft", 2), ("sft", 3), ("irft", 3)])
def test_lora_under_zero_trains_like_one_process(
    method: str, stage: int, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """LoRA (under ZeRO-3 with every parameter partitioned, the frozen base's too): the same steps as one process,
    and the same adapter (``adapter/``) and merged ``final/``, written from the gathered state; the checkpoints'
    adapter is the whole one too (not a partition's empty tensors)."""
    one, two = tmp_path / "one", tmp_path / "two"
    lora = [*LORA, *NO_DROPOUT[method]]
    assert main([*args_for(method, llama_dir, builtin_jsonl, one, batch_size=8), *lora]) == 0
    port = 29606 + stage + len(method)
    result = torchrun([*args_for(method, llama_dir, builtin_jsonl, two, batch_size=4), *lora], port, zero(stage))
    assert result.returncode == 0, result.stderr[-3000:]
    keys = STEP_METRICS[method]
    assert mismatches(step_records(one, keys[0]), step_records(two, keys[0]), keys, f"zero-{stage} lora") == []
    last = sorted((two / "checkpoints").glob("step-*"))[-1]
    assert not (last / "model").exists()  # the adapter alone, not the base
    left, right, saved = (
        load_file(str(folder / "adapter" / "adapter_model.safetensors")) for folder in (one, two, last)
    )
    assert left.keys() == right.keys() == saved.keys() and all(right[n].numel() == left[n].numel() > 0 for n in left)
    assert max(float((left[n] - right[n]).abs().max()) for n in left) < WEIGHT_ABS
    assert all(bool((saved[n] == right[n]).all()) for n in right)  # the last step's checkpoint is final's state
    assert_same_weights(one / "final", two / "final", llama_dir)


def test_float16_irft_scales_each_backward_once_under_deepspeeds_loss_scaler(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """float16 weights under ZeRO-2's dynamic loss scaler: the split pair backward (two ``backward`` calls per
    micro-batch, the generations' half and the demonstrations') and the shared one (one call) log the same steps.
    Were one half scaled twice, its gradient would come out 65536x too large after the step's single unscale."""
    records = {}
    for k, mode in enumerate(("split", "shared")):
        out = tmp_path / mode
        extra = ["model.dtype=float16", "train.batch_size=4"]
        extra += METHOD_ARGS["irft-shared"][len(METHOD_ARGS["irft"]) :] if mode == "shared" else []
        result = torchrun(
            irft_args_of(llama_dir, builtin_jsonl, out, [*METHOD_ARGS["irft"], *extra]), 29600 + k, zero(2)
        )
        assert result.returncode == 0, result.stderr[-3000:]
        records[mode] = step_records(out, "irft/loss")
        initial = load_file(str(llama_dir / "model.safetensors"))
        final = load_file(str(out / "final" / "model.safetensors"))
        assert {final[n].dtype for n in final} == {torch.float16}
        assert [n for n in initial if bool((initial[n].half() == final[n]).all())] == []
    # On this tiny model the first two steps overflow at DeepSpeed's initial 2**16 (its hysteresis of 2 halves the
    # scale on the second): both backward layouts must meet the same overflows, then apply the same steps.
    scales = [r["train/loss_scale"] for r in records["split"]]
    assert scales == [r["train/loss_scale"] for r in records["shared"]] and scales[-1] < scales[0]
    applied = [i for i, r in enumerate(records["split"]) if not r.get("train/nonfinite_skipped")]
    assert applied == [i for i, r in enumerate(records["shared"]) if not r.get("train/nonfinite_skipped")]
    assert len(applied) >= 2
    for a, b in zip(records["split"], records["shared"], strict=True):
        assert b["irft/loss"] == pytest.approx(a["irft/loss"], rel=1e-3)
    for i in applied:
        assert records["shared"][i]["train/grad_norm"] == pytest.approx(
            records["split"][i]["train/grad_norm"], rel=1e-3
        )


def test_float16_overflow_is_skipped_until_the_loss_scales_floor(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """An overflow above the scaler's floor is DeepSpeed's expected skip (the scale halves; ``stop`` does not
    stop); one at the floor is the gradient's own and meets ``train.on_nonfinite``, as under accelerate's fp16."""

    def run(name: str, scaler: dict[str, int], *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps({"zero_optimization": {"stage": 3}, "fp16": {"hysteresis": 1, **scaler}}))
        out = tmp_path / name
        args = sft_args(llama_dir, builtin_jsonl, out, "train.batch_size=4", "model.dtype=float16", *extra)
        env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config)}
        return torchrun(args, 29602 + len(extra), env), out

    result, out = run("high", {"initial_scale_power": 22}, "train.max_steps=12")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = step_records(out, "train/loss_scale")
    skipped = [r["step"] for r in rows if r.get("train/nonfinite_skipped")]
    assert skipped and skipped == list(range(1, len(skipped) + 1)) and len(skipped) < 12
    assert [r["train/loss_scale"] for r in rows[: len(skipped) + 1]] == [
        2.0 ** (22 - i) for i in range(len(skipped) + 1)
    ]
    result, out = run("floor", {"initial_scale_power": 1, "min_loss_scale": 1}, "train.max_steps=4", "optim.lr=1e30")
    assert result.returncode != 0
    assert "at the fp16 loss scale's floor of 1" in result.stdout + result.stderr
    rows = step_records(out, "train/loss_scale")
    assert [r["train/loss_scale"] for r in rows] == [2.0, 2.0] and rows[1]["train/nonfinite_skipped"] == 1.0


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_shipped_deepspeed_configs_launch(name: str, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    """``accelerate launch --config_file configs/accelerate/<name>.yaml --num_processes 2`` as the README writes it."""

    out = tmp_path / name
    result = accelerate_launch(
        name, LAUNCH_PORTS[name], sft_args(llama_dir, builtin_jsonl, out, "train.batch_size=4", "train.max_steps=2")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert (run["world_size"], run["engine"]) == (2, "deepspeed-zero2" if name == "zero2" else "deepspeed-zero3")
    assert AutoModelForCausalLM.from_pretrained(str(out / "final")).num_parameters() > 0
