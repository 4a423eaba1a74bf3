"""How long `rewardsft eval gap` takes (with a reference model, batched, CPU), each pair read as one shared-prefix
row (the default where the model takes a block mask) against two separate rows.

    python benchmarks/eval_gap_speed.py --pairs 1000 --out benchmarks/results/eval_gap_speed.json  # tiny model
    python benchmarks/eval_gap_speed.py --model /work/runs/smollm2 --data /work/runs/data/chitchat/pairs.jsonl \\
        --text-prompts user_turn --out benchmarks/results/eval_gap_speed_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from rewardsft.data.builtin import builtin_rows
from rewardsft.eval import logprob_gap as gap
from rewardsft.tiny import write_tiny_model


def builtin_pairs(path: Path, n: int) -> Path:
    rows = builtin_rows()
    with path.open("w") as handle:
        for i in range(n):
            row = rows[i % len(rows)]["messages"]  # type: ignore[index]
            other = rows[(i + 7) % len(rows)]["messages"]  # type: ignore[index]
            pair = {
                "prompt": row[0]["content"],
                "chosen": " " + row[1]["content"],
                "rejected": " " + other[1]["content"],
            }
            handle.write(json.dumps(pair) + "\n")
    return path


def timed(model: str, data: Path, out: Path, args: argparse.Namespace, shared: bool) -> tuple[float, Any]:
    settings = gap.GapSettings(batch_size=args.batch_size, max_rows=args.pairs)
    render = {"text_prompts": args.text_prompts} if args.text_prompts else None
    # Separate rows: the fallback a model without a block-mask kernel takes.
    refuse = mock.patch.object(gap, "block_mask_problem", lambda model: None if shared else "benchmark")
    with refuse:
        start = time.perf_counter()
        summary = gap.logprob_gap(model, str(data), out, ref_model=model, settings=settings, render=render)
        return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", help="model folder (default: a tiny Llama, hidden 64, 2 layers)")
    parser.add_argument("--data", help="preference pairs (default: built from the built-in rows)")
    parser.add_argument("--text-prompts", help="render flag for a plain model, e.g. user_turn")
    parser.add_argument("--out", default="benchmarks/results/eval_gap_speed.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(write_tiny_model(Path(tmp) / "model", hidden_size=64, layers=2))
        data = Path(args.data) if args.data else builtin_pairs(Path(tmp) / "pairs.jsonl", args.pairs)
        runs = {}
        for layout in ("separate", "shared", "separate", "shared"):  # twice each, interleaved; the second counts
            runs[layout] = timed(model, data, Path(tmp) / layout, args, shared=layout == "shared")
    (separate_s, separate), (shared_s, shared) = runs["separate"], runs["shared"]
    result = {
        "pairs": shared["pairs"],
        "with_ref_model": True,
        "batch_size": args.batch_size,
        "model": args.model or "tiny llama (hidden 64, 2 layers)",
        "seconds_separate": round(separate_s, 2),
        "seconds_shared": round(shared_s, 2),
        "shared_vs_separate_time": round(shared_s / separate_s, 3),
        "gap_mean_difference": abs(shared["gap"]["mean"] - separate["gap"]["mean"]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
