"""Decode throughput of rewardsft's ``generate`` against plain ``model.generate`` and the memory-bandwidth bound.

    .venv/bin/python -m benchmarks.generation_speed --out benchmarks/results/generation_speed_cpu.json
    .venv/bin/python -m benchmarks.generation_speed --size tiny --out /tmp/gen.json     # smoke run (seconds)

One randomly initialised Llama of SmolLM2-135M's shape (``benchmarks.irft_step.build``, fp32), the same prompts
(left-padded), sampling at temperature 1 without top-p/top-k, and every sequence generating exactly
``--new-tokens``: our side gets an end-of-turn id outside the vocabulary (never sampled), ``model.generate``
gets ``min_new_tokens``, so both sides count the same tokens. ``tokens_per_s`` is new tokens over the whole call
(prefill included); ``decode_tokens_per_s`` subtracts a prefill-only call (one new token), to compare with the
bound, which is for decode steps.

Bandwidth bound: a decode step reads every weight once (a tied embedding once: ``model.parameters()`` yields it
once), so decode steps/s ≤ bandwidth / weight bytes, with bandwidth = 2·bytes / time of ``dst.copy_(src)`` (read +
write) measured in this run. At batch B the bound is B × that in tokens/s: the weights are read once per step for
the whole batch. The KV cache a step also reads is left out of the bound and reported beside it (``kv_bytes``).
At larger batches compute binds first: ``compute_bound_tokens_per_s`` = fp32 matmul peak (``benchmarks.mfu``) /
(2 FLOPs × parameters per token), attention left out.

Variants, each timed in this run (best of ``--repeats`` after one warm-up call): ``ours`` and ``plain`` (fp32,
dynamic KV cache, SDPA attention), ``plain_static`` (``cache_implementation="static"``), ``ours_eager`` (eager
attention), ``ours_bf16`` (bf16 weights; the fp32-vs-bf16 next-token KL is in ``bf16_kl``), ``plain_compiled``
(static cache + ``torch.compile`` through transformers' ``compile_config``, batch 1, in a child process with a
time limit and an empty inductor cache, so ``first_call_s`` is a cold compile) and ``bucketing`` (mixed prompt
lengths, our longest-first order against input order).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.contention import OtherLoad, write_report
from benchmarks.irft_step import SIZES, build
from benchmarks.mfu import matmul_peak

CPU = torch.device("cpu")
REAL_MODEL = Path("runs/study/smollm2")  # SmolLM2-135M-Instruct written by `make study`, when present
SMOKE = {"prompt_len": 16, "new_tokens": 8, "batches": "1,2", "variant_batches": "1,2", "repeats": 1}
SMOKE |= {"bucket_prompts": 6, "bucket_batch": 2, "copy_mb": 16}


def copy_bandwidth(megabytes: int, repeats: int = 8, device: torch.device = CPU) -> float:
    """Bytes/s of ``dst.copy_(src)``, counting read + write (2 × size), best of ``repeats``."""
    src = torch.randn(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = min(timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * src.element_size() / best


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # GPU work is asynchronous: time its end, not its launch
    return time.perf_counter() - start


def weight_bytes(model: Any) -> int:
    # parameters() skips a tied lm_head, so the shared matrix is counted once, as it is read once per step.
    return sum(p.numel() * p.element_size() for p in model.parameters())


def kv_bytes(model: Any, context: int, dtype_bytes: int) -> int:
    """KV cache one sequence reads per decode step at ``context`` tokens (all layers, keys and values)."""
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * context * dtype_bytes


def make_prompts(lengths: Sequence[int], vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def run_ours(model: Any, prompts: list[list[int]], new_tokens: int, batch: int, cache: str = "dynamic") -> None:
    """rewardsft.generation.generate; the end-of-turn id is outside the vocabulary, so no sequence stops early."""
    from rewardsft.config import GenerationConfig
    from rewardsft.generation import generate

    settings: Any = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "batch_size": batch, "cache": cache}
    cfg = GenerationConfig(max_new_tokens=new_tokens, **settings)
    out = generate(model, prompts, cfg, pad_id=0, eos_ids=[model.config.vocab_size], seed=0)
    assert all(len(g.response_ids) == new_tokens for g in out)


def run_plain(model: Any, prompts: list[list[int]], new_tokens: int, **extra: Any) -> None:
    """``model.generate`` on the whole list as one left-padded batch, every row forced to ``new_tokens``."""
    from rewardsft.data.collate import collate_prompts

    batch = {k: v.to(model.device) for k, v in collate_prompts(prompts, 0).items()}
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            pad_token_id=0,
            **extra,
        )
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    return min(timed(fn) for _ in range(repeats))


def time_variants(model: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per call of every (variant, batch), best of ``args.repeats``."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    rows = []
    for batch in ints(args.batches):
        prompts = make_prompts([args.prompt_len] * batch, model.config.vocab_size, seed=batch)
        for name, call in variant_calls(model, bf16, prompts, args).items():
            load = OtherLoad()
            seconds = best_time(call, args.repeats)
            rows.append({"variant": name, "batch": batch, "seconds": seconds, "other_cores": load.cores()})
            print(f"{name} batch {batch}: {seconds:.2f} s", flush=True)
    return rows


def variant_calls(
    model: Any, bf16: Any, prompts: list[list[int]], args: argparse.Namespace
) -> dict[str, Callable[[], Any]]:
    n, batch = args.new_tokens, len(prompts)
    calls: dict[str, Callable[[], Any]] = {
        "ours": lambda: run_ours(model, prompts, n, batch),
        "plain": lambda: run_plain(model, prompts, n),
        "prefill": lambda: run_plain(model, prompts, 1),  # subtracted to get decode-only rates
    }
    if batch in ints(args.variant_batches):
        calls |= {
            "plain_static": lambda: run_plain(model, prompts, n, cache_implementation="static"),
            "ours_static": lambda: run_ours(model, prompts, n, batch, cache="static"),
            "ours_eager": lambda: with_attention(model, "eager", lambda: run_ours(model, prompts, n, batch)),
            "ours_bf16": lambda: run_ours(bf16, prompts, n, batch),
        }
    return calls


def with_attention(model: Any, kind: str, fn: Callable[[], Any]) -> Any:
    saved = model.config._attn_implementation
    model.set_attn_implementation(kind)
    try:
        return fn()
    finally:
        model.set_attn_implementation(saved)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_ratios(
    rows: list[dict[str, Any]], new_tokens: int, steps_per_s: dict[str, float], compute_bound: float
) -> list[dict[str, Any]]:
    """tokens/s, the bound at that batch and dtype, and ratios vs plain (same batch), vs the bandwidth bound and
    (fp32 rows) vs the fp32 compute bound."""
    by_key = {(r["variant"], r["batch"]): r["seconds"] for r in rows}
    out = []
    for row in rows:
        if row["variant"] == "prefill":
            continue
        b, seconds = row["batch"], row["seconds"]
        bound = b * steps_per_s["bfloat16" if row["variant"].endswith("bf16") else "float32"]
        tps = b * new_tokens / seconds
        rec = row | {"new_tokens": b * new_tokens, "tokens_per_s": tps, "bound_tokens_per_s": bound}
        rec |= {"vs_plain": by_key[("plain", b)] / seconds, "vs_bound": tps / bound}
        if not row["variant"].endswith("bf16"):
            rec["vs_compute_bound"] = tps / compute_bound
        if row["variant"] in ("ours", "plain"):
            # Decode steps only (prefill and the first token's sampling removed), against the decode bound.
            decode = b * (new_tokens - 1) / (seconds - by_key[("prefill", b)])
            rec |= {"decode_tokens_per_s": decode, "decode_vs_bound": decode / bound}
        out.append(rec)
    return out


def bucketing(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Mixed prompt lengths (uniform around ``prompt_len``): our longest-first batches against the same call made
    on input-order chunks of ``bucket_batch`` (one generate call per chunk, so no sorting across chunks)."""
    g = torch.Generator().manual_seed(7)
    lo, hi = max(args.prompt_len // 4, 1), args.prompt_len * 7 // 4
    lengths = torch.randint(lo, hi + 1, (args.bucket_prompts,), generator=g).tolist()
    prompts = make_prompts(lengths, model.config.vocab_size, seed=3)
    b = args.bucket_batch

    def unsorted() -> None:
        for start in range(0, len(prompts), b):
            run_ours(model, prompts[start : start + b], args.new_tokens, b)

    result = {"prompt_lengths": lengths, "batch": b}
    for name, fn in (("sorted", lambda: run_ours(model, prompts, args.new_tokens, b)), ("unsorted", unsorted)):
        seconds = best_time(fn, args.repeats)
        result[name] = {"seconds": seconds, "tokens_per_s": len(prompts) * args.new_tokens / seconds}
        result[name]["padding_share"] = padding_share(lengths if name == "unsorted" else sorted(lengths)[::-1], b)
    result["speedup"] = result["unsorted"]["seconds"] / result["sorted"]["seconds"]  # type: ignore[index]
    return result


def padding_share(lengths: list[int], batch: int) -> float:
    """Share of prompt positions that are padding when ``lengths`` are cut into consecutive batches."""
    chunks = [lengths[i : i + batch] for i in range(0, len(lengths), batch)]
    padded = sum(max(c) * len(c) for c in chunks)
    return 1 - sum(lengths) / padded


def next_token_kl(model: Any, prompts: torch.Tensor) -> dict[str, float]:
    """KL(fp32 ‖ bf16) of the next-token distributions at every position of ``prompts`` (B, T), plus top-1
    agreement and the fp32 entropy (a near-uniform distribution makes any KL small, so it is reported too)."""
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        lp32 = torch.log_softmax(model(input_ids=prompts).logits.float(), -1)
        lp16 = torch.log_softmax(bf16(input_ids=prompts).logits.float(), -1)
    kl = (lp32.exp() * (lp32 - lp16)).sum(-1)
    return {
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1_agreement": float((lp32.argmax(-1) == lp16.argmax(-1)).float().mean()),
        "entropy_fp32_mean": float(-(lp32.exp() * lp32).sum(-1).mean()),
        "log_vocab": float(torch.log(torch.tensor(float(lp32.shape[-1])))),
        "positions": int(kl.numel()),
    }


def real_model_kl(path: Path, prompt_len: int) -> dict[str, Any]:
    """The same KL on the real SmolLM2-135M-Instruct (random weights give nearly flat distributions) over
    windows of the built-in English corpus."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardsft.data.builtin import builtin_corpus

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(str(path))(" ".join(builtin_corpus()))["input_ids"]
    windows = torch.tensor([ids[i * prompt_len : (i + 1) * prompt_len] for i in range(4)])
    return {"model": str(path)} | next_token_kl(model, windows)


def decode_profile(model: Any, prompt_len: int, new_tokens: int, top: int = 8) -> list[dict[str, Any]]:
    """Top ops by self CPU time of one batch-1 call of our generate (where a decode step's time goes)."""
    prompts = make_prompts([prompt_len], model.config.vocab_size, seed=5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run_ours(model, prompts, new_tokens, 1)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:top]]


def compiled(args: argparse.Namespace) -> dict[str, Any]:
    """``plain_compiled`` at batch 1 in a child process, so a slow compile can be cut off."""
    if args.size == "tiny":
        return {"skipped": "not run with --size tiny"}
    cmd = [sys.executable, "-m", "benchmarks.generation_speed", "--compile-child", "--size", args.size]
    cmd += ["--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
    try:
        with tempfile.TemporaryDirectory() as cache:  # a cold compile: inductor's cache would hide its cost
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            out = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.compile_timeout, env=env, check=False
            )
    except subprocess.TimeoutExpired:
        return {"skipped": f"compile + timing took over {args.compile_timeout} s"}
    if out.returncode != 0:
        return {"skipped": "compile failed: " + out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_child(args: argparse.Namespace) -> None:
    from transformers import CompileConfig

    model = build(args.size, CPU).eval()
    prompts = make_prompts([args.prompt_len], model.config.vocab_size, seed=1)
    config = CompileConfig(mode="default")  # reduce-overhead means CUDA graphs
    config._compile_all_devices = True  # transformers compiles on GPUs only unless told (its flag for this)

    def call() -> None:
        run_plain(model, prompts, args.new_tokens, cache_implementation="static", compile_config=config)

    first = timed(call)  # compiles the prefill and decode graphs
    seconds = best_time(call, args.repeats)
    tps = args.new_tokens / seconds
    print(json.dumps({"batch": 1, "first_call_s": first, "seconds": seconds, "tokens_per_s": tps}))


def measure_gpu(args: argparse.Namespace) -> dict[str, Any]:
    """On a GPU: bf16 weights (rewardsft's default there), ours vs plain vs static cache at each batch, against
    the bound from the GPU's own copy bandwidth. The CPU-only parts (compile child, profile, KL) are left out."""
    device = torch.device(args.device)
    model = build(args.size, device, dtype=torch.bfloat16).eval()
    bandwidth = copy_bandwidth(args.copy_mb, device=device)
    weights = weight_bytes(model)
    steps_per_s = {"float32": bandwidth / weights, "bfloat16": bandwidth / weights}
    run_ours(model, make_prompts([args.prompt_len], model.config.vocab_size, 0), 2, 1)  # warm-up
    rows = []
    for batch in ints(args.batches):
        prompts = make_prompts([args.prompt_len] * batch, model.config.vocab_size, seed=batch)
        calls = variant_calls(model, model, prompts, args)
        calls.pop("ours_bf16", None)  # the model is bf16 already
        for name, call in calls.items():
            seconds = best_time(call, args.repeats)
            rows.append({"variant": name, "batch": batch, "seconds": seconds, "other_cores": 0.0})
            print(f"{name} batch {batch}: {seconds:.2f} s", flush=True)
    peak = matmul_peak(4096, repeats=5, device=device, dtype=torch.bfloat16)["flops_per_s"]
    compute_bound = peak / (2 * sum(p.numel() for p in model.parameters()))
    return {
        "model": {"shape": args.size, "parameters": sum(p.numel() for p in model.parameters()), "dtype": "bfloat16"},
        "device": torch.cuda.get_device_name(device),
        "weight_bytes": {"bfloat16": weights},
        "bandwidth": {"bytes_per_s": bandwidth, "definition": "2 * bytes / best time of dst.copy_(src) on the GPU"},
        "bound_steps_per_s": steps_per_s,
        "matmul_peak_flops_per_s": peak,
        "compute_bound_tokens_per_s": compute_bound,
        "results": add_ratios(rows, args.new_tokens, steps_per_s, compute_bound),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.device != "cpu":
        return measure_gpu(args)
    model = build(args.size, CPU).eval()
    bandwidth = copy_bandwidth(args.copy_mb)
    weights = {dtype: weight_bytes(model) // (2 if dtype == "bfloat16" else 1) for dtype in ("float32", "bfloat16")}
    steps_per_s = {dtype: bandwidth / n for dtype, n in weights.items()}
    # Compute bound: 2 FLOPs per parameter per token (attention left out) at the fp32 matmul peak.
    peak = matmul_peak(256 if args.size == "tiny" else 2048, repeats=5)["flops_per_s"]
    compute_bound = peak / (2 * sum(p.numel() for p in model.parameters()))
    run_ours(model, make_prompts([args.prompt_len], model.config.vocab_size, 0), 2, 1)  # warm-up
    rows = add_ratios(time_variants(model, args), args.new_tokens, steps_per_s, compute_bound)
    compiled_row = compiled(args)
    if "tokens_per_s" in compiled_row:
        plain_b1 = next((r for r in rows if r["variant"] == "plain" and r["batch"] == 1), None)
        compiled_row["vs_bound"] = compiled_row["tokens_per_s"] / steps_per_s["float32"]
        compiled_row["vs_plain"] = plain_b1["seconds"] / compiled_row["seconds"] if plain_b1 else None
    kl_prompts = torch.tensor(make_prompts([args.prompt_len] * 4, model.config.vocab_size, seed=11))
    real = REAL_MODEL if args.size != "tiny" and REAL_MODEL.is_dir() else None
    return {
        "model": {"shape": args.size, "parameters": sum(p.numel() for p in model.parameters())},
        "weight_bytes": weights,
        "kv_bytes_per_sequence_at_full_context": kv_bytes(model, args.prompt_len + args.new_tokens, 4),
        "bandwidth": {"bytes_per_s": bandwidth, "definition": "2 * bytes / best time of dst.copy_(src)"},
        "bound_steps_per_s": steps_per_s,
        "matmul_peak_flops_per_s": peak,
        "compute_bound_tokens_per_s": compute_bound,
        "results": rows,
        "plain_compiled": compiled_row,
        "bucketing": bucketing(model, args),
        "bf16_kl": {"random": next_token_kl(model, kl_prompts)}
        | ({"real": real_model_kl(real, args.prompt_len)} if real else {}),
        "decode_profile_b1": decode_profile(model, args.prompt_len, min(args.new_tokens, 16)),
    }


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smollm2")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,8,32", help="batch sizes of ours / plain")
    parser.add_argument("--variant-batches", default="1,32", help="batch sizes of the static / eager / bf16 variants")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bucket-prompts", type=int, default=16)
    parser.add_argument("--bucket-batch", type=int, default=8)
    parser.add_argument("--copy-mb", type=int, default=256, help="size of the copy that measures bandwidth")
    parser.add_argument("--compile-timeout", type=int, default=150)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: bf16 weights, ours/plain/static only)")
    parser.add_argument("--out", default="benchmarks/results/generation_speed.json")
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size == "tiny":
        # Smoke mode: small defaults unless given on the command line.
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
        for key, value in SMOKE.items():
            if key not in given:
                setattr(args, key, value)
    return args


def main() -> None:
    args = parse()
    if args.compile_child:
        compile_child(args)
        return
    started, others = time.perf_counter(), OtherLoad()
    report: dict[str, Any] = {"settings": vars(args) | {"torch": torch.__version__, "threads": torch.get_num_threads()}}
    report |= measure(args)
    write_report(args.out, report, started, others)
    for row in report["results"]:
        print(
            f"{row['variant']:>13} b{row['batch']:<3} {row['tokens_per_s']:8.1f} tok/s  vs plain "
            f"{row['vs_plain']:.2f}  vs bound {row['vs_bound']:.3f}"
        )


if __name__ == "__main__":
    main()
