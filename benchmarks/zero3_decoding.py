"""Generation under ZeRO-3 (issue 22): decode in lockstep, or gather the whole weights once and decode freely?

Two ways to sample from a policy whose parameters are partitioned over the processes:

- **lockstep**: every forward gathers each layer's parameters from all processes and frees them after (ZeRO-3's
  own hooks), so every process must run the same number of forwards (``synced_gpus``: a process whose prompts
  finished keeps stepping until all have); one all-gather per layer per generated token;
- **gather**: gather every parameter once for the whole generation call (DeepSpeed's
  ``unwrap_model_for_generation``, which also lifts the per-module hooks), decode with local weights, re-partition
  after: one all-gather per call, and the whole model resident in every process while it decodes. Processes still
  step together (``synced_gpus``: the hook DeepSpeed keeps on the top module compares step counts every forward).

Each mode runs in its own pair of torchrun processes on the same model and prompts (per process ``--prompts``
prompts of the built-in data, greedy, ``--new-tokens`` tokens, one generation batch, every parameter partitioned),
``--repeats`` timed calls after one warm-up. Memory is each process's resident set (``/proc/self/statm``) sampled
every 5 ms from the first (warm-up) call to the end, against its value just before it: what decoding adds on
top of the partitioned model (the allocator keeps freed pages, so a later call's value would hide the first's). Both modes must produce the same tokens (checked).

``python -m benchmarks.zero3_decoding --model runs/smollm2 --out benchmarks/results/zero3_decoding_cpu.json``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MODES = ("lockstep", "gather")


def resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """The highest resident memory seen while the block runs (a background thread samples every 5 ms)."""

    def __enter__(self) -> PeakSampler:
        self.peak, self.running = resident_mb(), True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, resident_mb())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def worker(mode: str, model_path: str, prompts: int, new_tokens: int, repeats: int, record: Path) -> None:
    import deepspeed
    import torch
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardsft.data.builtin import builtin_rows

    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    settings = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=settings, dist_init_required=False)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    rows = builtin_rows()[rank * prompts : (rank + 1) * prompts]
    batch = tokenizer([r["messages"][0]["content"] for r in rows], return_tensors="pt", padding=True)

    def generate() -> torch.Tensor:
        settings = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
        with torch.no_grad():
            if mode == "lockstep":
                return engine.module.generate(**batch, synced_gpus=True, **settings)  # type: ignore[no-any-return]
            with unwrap_model_for_generation(engine):
                # Still synced: DeepSpeed's top-module hook compares step counts across processes every forward.
                return engine.module.generate(**batch, synced_gpus=True, **settings)  # type: ignore[no-any-return]

    before = resident_mb()
    times = []
    with PeakSampler() as peak:
        generate()  # warm-up: sampled too, as the allocator keeps what a first call took
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = generate()
            times.append(time.perf_counter() - start)
    result = {"seconds": times, "extra_mb": peak.peak - before, "tokens": tokens.tolist()}
    (record.parent / f"{record.name}-rank{rank}.json").write_text(json.dumps(result))


def run_mode(mode: str, args: argparse.Namespace, work: Path, port: int) -> list[dict[str, Any]]:
    record = work / mode
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "benchmarks.zero3_decoding"]
    cmd += ["--worker", mode, "--model", args.model, "--prompts", str(args.prompts)]
    cmd += ["--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats), "--record", str(record)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        raise SystemExit(f"{mode}: {result.stderr[-2000:]}")
    return [json.loads((work / f"{mode}-rank{r}.json").read_text()) for r in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/smollm2")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per process (one generation batch)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.prompts, args.new_tokens, args.repeats, Path(args.record))
        return
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ranks = {mode: run_mode(mode, args, Path(tmp), 29760 + k) for k, mode in enumerate(MODES)}
    same = all(ranks["lockstep"][r]["tokens"] == ranks["gather"][r]["tokens"] for r in range(2))
    for mode, per_rank in ranks.items():
        seconds = [min(r["seconds"]) for r in per_rank]
        results[mode] = {
            "best_seconds_per_call": max(seconds),  # the call ends when the slower process does
            "extra_mb_per_process": [round(r["extra_mb"], 1) for r in per_rank],
        }
    ratio = results["gather"]["best_seconds_per_call"] / results["lockstep"]["best_seconds_per_call"]
    record = {
        "model": args.model,
        "processes": 2,
        "prompts_per_process": args.prompts,
        "new_tokens": args.new_tokens,
        "same_tokens": same,
        "gather_time_over_lockstep": round(ratio, 3),
        "results": results,
    }
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
