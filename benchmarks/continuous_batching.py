"""transformers' continuous batching (``model.generate_batch``, paged attention) against the HF ``generate`` the
sampler uses (issue 22's sampler seam: offer a backend only where it pays).

Greedy decoding of the same prompts both ways on a real small model (SmolLM2-135M-Instruct, ``OFFLINE.md``):
seconds per call (median of ``--repeats``, after one warm-up call each) and whether the texts agree.
``python -m benchmarks.continuous_batching --model runs/smollm2 --out benchmarks/results/continuous_batching_cpu.json``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/smollm2")
    parser.add_argument("--prompts", type=int, default=16, help="IRFT's generation.batch_size default")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, GenerationConfig

    from rewardsft.config import GenerationConfig as OurGeneration
    from rewardsft.generation import make_sampler

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    draw = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(100, vocab, (int(n),), generator=draw).tolist()
        for n in torch.randint(16, 48, (args.prompts,), generator=draw)
    ]
    pad, eos = model.config.pad_token_id or 0, [model.config.eos_token_id or 0]
    sampler = make_sampler(
        OurGeneration(max_new_tokens=args.new_tokens, do_sample=False, batch_size=args.prompts), pad, eos
    )

    def hf() -> list[list[int]]:
        return [g.response_ids for g in sampler.sample(model, prompts, seed=0)]

    config = GenerationConfig(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad)

    def continuous() -> list[list[int]]:
        with torch.no_grad():
            out = model.generate_batch(inputs=prompts, generation_config=config, warmup=False)
        by_request = [out[key].generated_tokens for key in sorted(out, key=lambda k: int(k.split("_")[-1]))]
        return [list(ids) for ids in by_request]

    record = {
        "model": args.model,
        "prompts": args.prompts,
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
    }
    texts = {}
    for name, fn in (("hf_generate", hf), ("continuous_batching", continuous)):
        texts[name] = fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        record[f"{name}_s"] = statistics.median(times)
    cut = [ids[: len(ref)] for ids, ref in zip(texts["continuous_batching"], texts["hf_generate"], strict=True)]
    record["same_greedy_tokens"] = sum(a == b for a, b in zip(cut, texts["hf_generate"], strict=True)) / args.prompts
    record["ratio"] = record["continuous_batching_s"] / record["hf_generate_s"]
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
