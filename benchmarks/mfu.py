"""Training MFU on CPU: achieved FLOP/s of an SFT and an IRFT step against a large fp32 matmul's FLOP/s.

    .venv/bin/python -m benchmarks.mfu --out benchmarks/results/mfu_cpu.json
    .venv/bin/python -m benchmarks.mfu --size tiny --out /tmp/mfu.json        # smoke run (seconds)

Peak: ``a @ b`` with a, b of n × n fp32 (n = 2048), 2·n³ FLOPs, best of ``--matmul-repeats``, same threads.

Steps: ``benchmarks.irft_step.prepare_ours`` (the recipes' own functions, AdamW, no gradient checkpointing) on a
random Llama of SmolLM2-135M's shape; median of ``--steps`` after a warm-up step. IRFT (``irft_cached``: the
default split pair forward) trains on two sequences per example; its snapshot log-probs are cached before the
steps, so they are not in the step. ``irft_cached_joint`` (one forward of both halves) is timed beside it.

Model FLOPs per trained token (fwd + bwd = 3 × fwd; every position of prompt + response is trained through):

    6 · N_body + 6 · d · V + 12 · L · d · S

N_body: parameters outside the embedding and the output head; 6·d·V: the lm_head matmul (tied or not, it is a real
matmul; the embedding lookup is not); 12·L·d·S: attention scores and values (QKᵀ and AV, 2·2·d·S FLOPs per layer
and token forward, ×3 for backward), S = sequence length, counted without the causal half (the usual estimate).
MFU = model FLOPs / step time / peak. The split IRFT forward also runs one extra no-grad forward of the
generations (2·N + 4·L·d·S per token): that is in ``hfu`` (hardware FLOPs), not in ``mfu``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.contention import OtherLoad, write_report
from benchmarks.irft_step import SIZES, prepare_ours, sync

CPU = torch.device("cpu")
METHODS = {"sft": 1, "irft_cached": 2, "irft_cached_joint": 2}  # sequences trained per example
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def matmul_peak(
    n: int, repeats: int, device: torch.device = CPU, dtype: torch.dtype = torch.float32
) -> dict[str, float]:
    """FLOP/s of an n × n matmul in ``dtype`` on ``device``: best and median of ``repeats`` (after one warm-up)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    flops = 2 * n**3
    return {"n": n, "flops_per_s": flops / min(times), "median_flops_per_s": flops / sorted(times)[len(times) // 2]}


def flops_per_token(size: str, seq_len: int) -> dict[str, float]:
    from transformers import LlamaConfig

    config = LlamaConfig(max_position_embeddings=1024, **SIZES[size])  # as irft_step.build makes it
    d, vocab, layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    total = sum(p.numel() for p in build_meta(config).parameters())
    head = 0 if config.tie_word_embeddings else vocab * d  # an untied lm_head is its own parameter
    body = total - vocab * d - head
    terms = {"body": 6.0 * body, "lm_head": 6.0 * d * vocab, "attention": 12.0 * layers * d * seq_len}
    return terms | {"total": sum(terms.values()), "body_parameters": body, "parameters": total}


def build_meta(config: Any) -> Any:
    """The model on the meta device: parameter counts without allocating weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def time_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Median and best step time, the cores other processes used during each step, and the top ops of one more
    step under the profiler."""
    step = prepare_ours(method, step_args(args), torch.device(args.device))
    times, others = [], []
    for i in range(args.steps + 1):  # step 0 warms up
        load, start = OtherLoad(), time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
        others.append(load.cores())
    median = sorted(times[1:])[len(times[1:]) // 2]
    timing = {"step_s": times[1:], "other_cores_per_step": others[1:], "median_step_s": median}
    timing |= {"best_step_s": min(times[1:])}
    if args.device != "cpu":  # the CPU profile's op shares say nothing about GPU kernels
        return timing | {"top_ops": None, "matmul_share": None}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(args.steps + 1)
    return timing | top_ops(prof, args.top_ops)


def step_args(args: argparse.Namespace) -> argparse.Namespace:
    # prepare_ours makes pairs for steps + 1 steps; one more for the profiled step.
    return argparse.Namespace(
        size=args.size,
        dtype=args.dtype,
        gradient_checkpointing=False,
        batch_size=args.batch_size,
        steps=args.steps + 1,
        prompt_len=args.prompt_len,
        response_len=args.response_len,
    )


def top_ops(prof: Any, top: int) -> dict[str, Any]:
    """Top ops by self CPU time (shares of the profiled step) and the share of matmul-like ops."""
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:top]]
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / total
    return {"top_ops": ops, "matmul_share": matmul}


def summarise(
    method: str, timing: dict[str, Any], per_token: dict[str, float], tokens: int, peak: float
) -> dict[str, Any]:
    """Model FLOPs, achieved FLOP/s, MFU, and for the split IRFT forward the hardware FLOPs (extra forward)."""
    model_flops = per_token["total"] * tokens
    achieved = model_flops / timing["median_step_s"]
    extra = 0.0
    if method == "irft_cached":  # one no-grad forward of the generation half: a third of its fwd + bwd
        extra = per_token["total"] / 3 * tokens / 2
    out = timing | {"tokens_per_step": tokens, "model_flops_per_step": model_flops}
    out |= {"achieved_flops_per_s": achieved, "mfu": achieved / peak}
    out["mfu_best_step"] = model_flops / timing["best_step_s"] / peak  # the step least slowed by other processes
    out |= {"hfu": (model_flops + extra) / timing["median_step_s"] / peak}
    # FLOP/s the matmul-like ops ran at, if they carried all the model FLOPs in their profiled share of the step.
    out["matmul_flops_per_s_estimate"] = achieved / timing["matmul_share"] if timing["matmul_share"] else None
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    peak = matmul_peak(args.matmul_n, args.matmul_repeats, torch.device(args.device), getattr(torch, args.dtype))
    print(f"peak {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({args.dtype} on {args.device})", flush=True)
    seq = args.prompt_len + args.response_len
    per_token = flops_per_token(args.size, seq)
    results = {}
    for method in args.methods.split(","):
        tokens = args.batch_size * METHODS[method] * seq
        results[method] = summarise(method, time_method(method, args), per_token, tokens, peak["flops_per_s"])
        r = results[method]
        print(
            f"{method}: {r['median_step_s']:.2f} s/step, {r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s, "
            f"MFU {r['mfu']:.3f}",
            flush=True,
        )
    formula = "6*N_body + 6*d*V (lm_head) + 12*L*d*S (attention), per trained token"
    return {"peak": peak, "flops_per_token": per_token | {"formula": formula}, "results": results}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smollm2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=64)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=8)
    parser.add_argument("--top-ops", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: fp32 CPU, bf16 GPU")
    parser.add_argument("--out", default="benchmarks/results/mfu.json")
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    if args.size == "tiny":  # smoke mode: a small matmul and one timed step
        args.matmul_n, args.matmul_repeats, args.steps = 256, 3, 1
    return args


def main() -> None:
    args = parse()
    started, others = time.perf_counter(), OtherLoad()
    report: dict[str, Any] = {"settings": vars(args) | {"torch": torch.__version__, "threads": torch.get_num_threads()}}
    report |= measure(args)
    write_report(args.out, report, started, others)


if __name__ == "__main__":
    main()
