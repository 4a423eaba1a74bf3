"""Per-process peak memory of each engine (issue 22's table): SFT on a ~135M model, one plain process against two
CPU processes under DDP, FSDP2, DeepSpeed ZeRO-2, ZeRO-3 and ZeRO-3 with CPU offload.

Each run trains ``--steps`` SFT steps (AdamW, batch 2 per process, rows of up to 128 tokens) through the CLI, and
every process records its own peak resident memory (``ru_maxrss``: Python, torch and the libraries included, so
the differences between engines are the signal, not the totals). On a CPU the offload variant has nowhere to
offload to (the "device" is the CPU already): it is listed for completeness.

``python -m benchmarks.engine_memory --model runs/smollm2 --out benchmarks/results/engine_memory_cpu.json``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ENGINES: dict[str, dict[str, str]] = {
    "plain (1 process)": {},
    "DDP": {},
    "FSDP2": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
    "ZeRO-2": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
    "ZeRO-3": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
    "ZeRO-3 + offload": {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu",
    },
}


def worker(record: Path, args: list[str]) -> None:
    """Train through the CLI, then write this process's peak resident memory (MB)."""
    from rewardsft.cli import main

    code = main(args)
    rank = int(os.environ.get("RANK", "0"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    (record.parent / f"{record.name}-rank{rank}.json").write_text(json.dumps({"rc": code, "peak_mb": peak_mb}))
    raise SystemExit(code)


def measure(name: str, env: dict[str, str], cli: list[str], work: Path, port: int) -> dict[str, Any]:
    record = work / name.replace(" ", "_").replace("(", "").replace(")", "")
    processes = 1 if name.startswith("plain") else 2
    launcher = [sys.executable] if processes == 1 else [str(Path(sys.executable).with_name("torchrun"))]
    if processes == 2:
        launcher += ["--nproc_per_node", "2", "--master_port", str(port)]
    cmd = [*launcher, "-m", "benchmarks.engine_memory", "--worker", str(record), "--", *cli, f"output_dir={record}-run"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FSDP_", "ACCELERATE_"))}
    result = subprocess.run(cmd, capture_output=True, text=True, env={**clean, "OMP_NUM_THREADS": "1", **env})
    if result.returncode != 0:
        return {"error": result.stderr[-1500:]}
    ranks = [json.loads((work / f"{record.name}-rank{r}.json").read_text())["peak_mb"] for r in range(processes)]
    return {"processes": processes, "peak_mb_per_process": ranks, "max_peak_mb": max(ranks)}


def main() -> None:
    if "--worker" in sys.argv:
        at = sys.argv.index("--worker")
        worker(Path(sys.argv[at + 1]), sys.argv[sys.argv.index("--") + 1 :])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/smollm2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from rewardsft.data.builtin import builtin_rows

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "train.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in builtin_rows()))
        for k, name in enumerate(args.engines.split(",")):
            batch = 4 if name.startswith("plain") else 2  # the same global batch of 4
            cli = ["train", "sft", f"model.name_or_path={args.model}", f"data.path={data}", f"train.batch_size={batch}"]
            cli += [
                f"train.max_steps={args.steps}",
                "data.max_length=128",
                "data.max_prompt_length=64",
                "logging.progress=false",
            ]
            cli += ["optim.name=adamw", "train.save_every=1000000"]
            results[name] = measure(name, ENGINES[name], cli, work, 29700 + k)
            print(name, json.dumps(results[name])[:300], flush=True)
    record = {"model": args.model, "steps": args.steps, "global_batch": 4, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
