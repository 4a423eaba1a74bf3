"""SFT with ``train.packing`` against SFT without, on real demonstrations: tokens per second and the padding share.

    .venv/bin/python -m benchmarks.packing --model /work/runs/smollm2 --data /work/runs/data \\
        --out benchmarks/results/packing_cpu.json          # the real-data study's domains (benchmarks/real_study.py)
    .venv/bin/python -m benchmarks.packing --size tiny --out /tmp/p.json       # smoke run on the built-in data

Per domain the demonstrations are loaded and rendered as the study's runs render them (``real_study.RENDER``, the
model's tokenizer), shuffled once, and cut into micro-batches of ``--batch-size``; each mode then runs the same
``--steps`` SFT steps (the recipe's own ``accumulate_sft_step``, AdamW) from the same weights, after one warm-up
step. Padding share: pad positions / positions computed (rows × width, the model's whole input). Tokens per
second: real (non-pad) tokens / median step time. Packing keeps every micro-batch's examples and packs them into
rows of up to ``data.max_length`` tokens (``RENDER``: 128), as ``train.packing`` does.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.real_study import RENDER


def domain_examples(model: str, data: Path, rows: int) -> list[Any]:
    """The demonstrations tokenised as ``rewardsft train sft`` would with the study's rendering."""
    from rewardsft.config import load_config
    from rewardsft.data import Renderer, load_split
    from rewardsft.layout import render_settings
    from rewardsft.models import load_tokenizer

    overrides = [f"model.name_or_path={model}", f"data.path={data}", f"data.max_rows={rows}"]
    config = load_config("sft", overrides=overrides + [f"data.{k}={v}" for k, v in RENDER.items()])
    renderer = Renderer.from_settings(load_tokenizer(config.model), render_settings(config.data))
    dc = config.data
    train = load_split(
        dc.path,
        dc.split,
        renderer,
        fmt=dc.format,
        max_rows=dc.max_rows,
        max_length=dc.max_length,
        max_prompt_length=dc.max_prompt_length,
    )
    return list(train.tokenized)


def layout(batches: list[list[Any]], width: int | None) -> dict[str, float]:
    """Rows, positions computed and real tokens of the micro-batches, padded (``width`` None) or packed."""
    from rewardsft.data.collate import collate, collate_packed

    rows = positions = real = 0
    for batch in batches:
        ids = (collate(batch, 0) if width is None else collate_packed(batch, 0, width))["input_ids"]
        rows += ids.shape[0]
        positions += ids.numel()
        real += sum(len(ex.input_ids) for ex in batch)
    return {"rows": rows, "positions": positions, "tokens": real, "padding_share": 1 - real / positions}


def time_mode(model_path: str, batches: list[list[Any]], width: int | None, pad_id: int) -> list[float]:
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from rewardsft.steps.sft import accumulate_sft_step
    from rewardsft.training.engine import AccelerateEngine

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    engine = AccelerateEngine(Accelerator(cpu=True))
    times = []
    for batch in batches:
        start = time.perf_counter()
        accumulate_sft_step(engine, model, [batch], pad_id, width)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:]  # the first step warms up


def run_domain(name: str, model: str, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    from rewardsft.config import ModelConfig
    from rewardsft.models import load_tokenizer

    examples = domain_examples(model, data, args.rows)
    random.Random(0).shuffle(examples)
    need = args.batch_size * (args.steps + 1)
    batches = [examples[i : i + args.batch_size] for i in range(0, min(need, len(examples)), args.batch_size)]
    pad_id = load_tokenizer(ModelConfig(name_or_path=model)).pad_token_id
    record: dict[str, Any] = {"examples": len(examples), "steps": len(batches) - 1}
    for packing in (False, True):
        width = RENDER["max_length"] if packing else None  # as train.packing packs: to data.max_length
        times = time_mode(model, batches, width, pad_id)
        shape = layout(batches[1:], width)
        median = sorted(times)[len(times) // 2]
        steps = len(times)
        record["packed" if packing else "padded"] = shape | {
            "median_step_s": median,
            "tokens_per_s": shape["tokens"] / steps / median,
        }
        print(f"{name} packing={packing}: {median:.3f} s/step, padding {shape['padding_share']:.1%}", flush=True)
    record["speedup"] = record["packed"]["tokens_per_s"] / record["padded"]["tokens_per_s"]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (its tokenizer renders the data, its weights train)")
    parser.add_argument("--size", choices=["tiny"], help="smoke run: a tiny model on the built-in data")
    parser.add_argument("--data", help="prepared study data (benchmarks/real_study.py prepare)")
    parser.add_argument("--domains", default="tweets,amazon,chitchat")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows", type=int, default=128, help="demonstrations read per domain")
    parser.add_argument("--out", default="benchmarks/results/packing_cpu.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.size is not None:  # smoke run: a tiny model written here, the built-in demonstrations
        import tempfile

        from rewardsft.data.builtin import builtin_rows
        from rewardsft.tiny import write_tiny_model

        tmp = Path(tempfile.mkdtemp())
        write_tiny_model(tmp / "model")
        (tmp / "demos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in builtin_rows()))
        results["builtin"] = run_domain("builtin", str(tmp / "model"), tmp / "demos.jsonl", args)
    else:
        if args.model is None or args.data is None:
            parser.error("--model and --data (or --size for a smoke run)")
        for name in args.domains.split(","):
            path = Path(args.data) / name / "demonstrations.jsonl"
            results[name] = run_domain(name, args.model, path, args)
    report = {"settings": vars(args) | {"torch": torch.__version__}, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: round(v["speedup"], 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
