"""How long `rewardsft eval gap` takes on 1,000 preference pairs with a tiny model (batched, CPU).

python benchmarks/eval_gap_speed.py --pairs 1000 --out benchmarks/results/eval_gap_speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rewardsft.data.builtin import builtin_rows
from rewardsft.eval.logprob_gap import GapSettings, logprob_gap
from rewardsft.tiny import write_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/eval_gap_speed.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_model(Path(tmp) / "model", hidden_size=64, layers=2)
        rows = builtin_rows()
        data = Path(tmp) / "pairs.jsonl"
        with data.open("w") as handle:
            for i in range(args.pairs):
                row = rows[i % len(rows)]["messages"]  # type: ignore[index]
                other = rows[(i + 7) % len(rows)]["messages"]  # type: ignore[index]
                pair = {
                    "prompt": row[0]["content"],
                    "chosen": " " + row[1]["content"],
                    "rejected": " " + other[1]["content"],
                }
                handle.write(json.dumps(pair) + "\n")
        start = time.perf_counter()
        summary = logprob_gap(
            str(model),
            str(data),
            Path(tmp) / "out",
            ref_model=str(model),
            settings=GapSettings(batch_size=args.batch_size),
        )
        seconds = time.perf_counter() - start
    result = {
        "pairs": summary["pairs"],
        "seconds_total": round(seconds, 2),
        "with_ref_model": True,
        "batch_size": args.batch_size,
        "model": "tiny llama (hidden 64, 2 layers)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
