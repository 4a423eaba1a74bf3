"""Seconds per optimiser step and peak memory: SFT vs IRFT (cached, copy) vs TRL's DPOTrainer.

Every method runs in its own process (so peak memory is its own) on the same model, the same pairs and the
same batch size. IRFT and DPO process two sequences per example (demonstration + generation); SFT one.
``irft_cached`` / ``irft_copy`` use the default split pair forward; ``irft_cached_joint`` the joint one;
``irft_shared`` the shared-prefix one (one row per pair, the prompt computed once for both responses).
``rft_round`` is one whole RFT round (sampling 2 responses per prompt, a reward step, a policy step), timed per
phase; the paper puts RFT at about two SFTs plus generation. ``rft_round_shared`` is the same round with
``rft.rollout_forward=shared`` (a prompt's samples read from one row).

    python benchmarks/irft_step.py --out benchmarks/results/irft_step_cpu.json            # SmolLM2-size Llama
    python benchmarks/irft_step.py --size tiny --steps 3 --out /tmp/b.json              # a quick smoke run

On CPU, peak memory is the process's peak RSS minus its RSS after imports; with ``--live-memory`` glibc is told
to return freed tensors at once (MALLOC_MMAP_THRESHOLD_), so that peak is the peak of live memory, at the cost
of slower allocation (take times from a run without the flag). On CUDA it is ``torch.cuda.max_memory_allocated``. Writes JSON; the ratios the IRFT issue targets are in ``ratios``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

METHODS = (
    "sft",
    "irft_cached",
    "irft_cached_joint",
    "irft_shared",
    "irft_copy",
    "trl_dpo",
    "rft_round",
    "rft_round_shared",
)
PAIR_FORWARD = {"irft_cached_joint": "joint", "irft_shared": "shared"}
"""The pair forward of each IRFT method (the others: split, the CPU default)."""
SIZES = {
    # SmolLM2-135M's shape (134.5M parameters): weights matter at this size.
    "smollm2": {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
    # TinyLlama-1.1B's shape (1.1B parameters): for GPUs, where a 135M model cannot fill the matmul units.
    "llama1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "intermediate_size": 5632,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "tie_word_embeddings": False,
    },
}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(size: str, device: torch.device, checkpointing: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=1024, **SIZES[size])
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype)
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    return model


def make_pairs(n: int, prompt_len: int, response_len: int, vocab: int) -> list[Any]:
    from rewardsft.data import TokenizedExample
    from rewardsft.reference import Pair

    g = torch.Generator().manual_seed(1)

    def ids(k: int) -> list[int]:
        return torch.randint(3, vocab, (k,), generator=g).tolist()

    pairs = []
    for i in range(n):
        prompt = ids(prompt_len)
        pairs.append(
            Pair(TokenizedExample(prompt, ids(response_len), i), TokenizedExample(prompt, ids(response_len), i))
        )
    return pairs


def run_ours(method: str, args: argparse.Namespace, device: torch.device) -> list[float]:
    """SFT or one IRFT optimiser step through the recipe's own functions (``irft_*``: split pair forward)."""
    step_fn = prepare_ours(method, args, device)
    times = []
    for step in range(args.steps + 1):  # step 0 warms up
        start = time.perf_counter()
        step_fn(step)
        times.append(time.perf_counter() - start)
    return times[1:]


def prepare_ours(method: str, args: argparse.Namespace, device: torch.device) -> Callable[[int], None]:
    """Build the model, optimiser and (IRFT) snapshot; returns ``step(i)``, which runs optimiser step ``i`` on
    its own ``batch_size`` pairs (``args.steps + 1`` steps' worth exist). Shared with ``benchmarks/mfu.py``."""
    from accelerate import Accelerator

    from rewardsft.config import load_config
    from rewardsft.data import collate
    from rewardsft.logprobs import model_token_logps
    from rewardsft.losses import sft_nll
    from rewardsft.reference import CachedSnapshot, CopySnapshot, compute_ref_logps
    from rewardsft.steps.pairs import PAIR_BACKWARDS, PairLossSpec, PairStep, StepSize
    from rewardsft.training.engine import AccelerateEngine

    model = build(args.size, device, args.gradient_checkpointing, getattr(torch, getattr(args, "dtype", "float32")))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    pairs = make_pairs(args.batch_size * (args.steps + 1), args.prompt_len, args.response_len, model.config.vocab_size)
    spec = PairLossSpec.from_config(load_config("irft"))
    accelerator = Accelerator(cpu=device.type == "cpu")
    size = StepSize(pairs=args.batch_size, tokens=args.batch_size * args.response_len, processes=1)
    backward = PAIR_BACKWARDS[PAIR_FORWARD.get(method, "split")]
    pair_step = PairStep(AccelerateEngine(accelerator), model, spec, size, pad_id=0)
    snapshot: Any = None
    if method.startswith("irft_cached") or method == "irft_shared":
        snapshot = CachedSnapshot(compute_ref_logps(model, pairs, args.batch_size, pad_id=0))
    elif method == "irft_copy":
        snapshot = CopySnapshot(model)

    def step_fn(step: int) -> None:
        ids = list(range(step * args.batch_size, (step + 1) * args.batch_size))
        if method == "sft":
            batch = {k: v.to(device) for k, v in collate([pairs[i].demo for i in ids], 0).items()}
            sft_nll(model_token_logps(model, **batch)).backward()
        else:
            chunk = [pairs[i] for i in ids]
            ref_demo, ref_gen = snapshot.logps(ids, chunk, 0, device)
            backward(pair_step, chunk, ref_demo, ref_gen, True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)

    return step_fn


def run_rft(
    args: argparse.Namespace, device: torch.device, rollout_forward: str = "separate"
) -> tuple[list[float], dict[str, float]]:
    """One RFT round per step: sample k=2 responses for each of ``batch_size`` prompts, one reward step (BT
    on 2·batch_size demo-vs-generation pairs), one RLOO policy step; policy + frozen reference + reward model
    (+ two optimisers) in memory. Returns round times and the mean seconds of each phase."""
    import copy
    from types import SimpleNamespace

    from accelerate import Accelerator

    from rewardsft.config import load_config
    from rewardsft.reward import load_reward_model, score_examples
    from rewardsft.steps.rollout import RolloutSpec, make_rollout, policy_step, reward_step
    from rewardsft.training.engine import AccelerateEngine

    policy = build(args.size, device, args.gradient_checkpointing)
    policy.train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(tmp)
        reward_model = load_reward_model(tmp, device, pad_token_id=0).train()
    policy_opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    rm_opt = torch.optim.AdamW(reward_model.parameters(), lr=1e-5)
    config = load_config(
        "rft",
        overrides=[
            f"generation.max_new_tokens={args.response_len}",
            "rft.samples_per_prompt=2",
            f"train.batch_size={2 * args.batch_size}",
            "rft.reward_norm=none",
            f"generation.batch_size={2 * args.batch_size}",
            f"data.max_length={args.prompt_len + args.response_len}",
            f"data.max_prompt_length={args.prompt_len}",
            f"rft.rollout_forward={rollout_forward}",
        ],
    )
    run = SimpleNamespace(
        device=device,
        engine=AccelerateEngine(Accelerator(cpu=device.type == "cpu")),
        rank=0,
        average_gradients=lambda model: None,
    )
    spec = RolloutSpec.from_config(config, pad_id=0, stop_ids=[2], shared=rollout_forward == "shared")
    pairs = make_pairs(args.batch_size * (args.steps + 1), args.prompt_len, args.response_len, policy.config.vocab_size)
    times, phases = [], {"generate_s": 0.0, "reward_step_s": 0.0, "policy_step_s": 0.0}
    for step in range(args.steps + 1):
        demos = [p.demo for p in pairs[step * args.batch_size : (step + 1) * args.batch_size]]
        marks = [time.perf_counter()]
        rollout = make_rollout(run, policy, reference, demos, spec, step)  # type: ignore[arg-type]
        marks.append(time.perf_counter())
        reward_step(run, reward_model, rollout, [], spec, step)  # type: ignore[arg-type]
        rm_opt.step()
        rm_opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        scores = torch.tensor(score_examples(reward_model, rollout.gens, 2 * args.batch_size, 0))
        policy_step(run.engine, policy, rollout, scores, spec)
        policy_opt.step()
        policy_opt.zero_grad(set_to_none=True)
        sync(device)
        marks.append(time.perf_counter())
        times.append(marks[-1] - marks[0])
        if step > 0:
            for key, (a, b) in zip(phases, itertools.pairwise(marks), strict=True):
                phases[key] += (b - a) / args.steps
    return times[1:], phases


def run_trl(args: argparse.Namespace, device: torch.device, workdir: Path) -> list[float]:
    import copy

    import trl
    from datasets import Dataset

    from rewardsft.tiny import train_tokenizer

    model = build(args.size, device, args.gradient_checkpointing)
    ref = copy.deepcopy(model).eval()
    tokenizer = train_tokenizer(["a b c d e f g h"], vocab_size=300)
    pairs = make_pairs(args.batch_size * (args.steps + 1), args.prompt_len, args.response_len, model.config.vocab_size)
    rows = [
        {"prompt_ids": p.demo.prompt_ids, "chosen_ids": p.demo.response_ids, "rejected_ids": p.gen.response_ids}
        for p in pairs
    ]
    config = trl.DPOConfig(
        output_dir=str(workdir),
        beta=0.1,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-6,
        report_to=[],
        use_cpu=device.type == "cpu",
        bf16=False,
        max_length=None,
        precompute_ref_log_probs=False,
    )
    text = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=text, processing_class=tokenizer)
    # Swap in pre-tokenised rows after TRL's text pipeline, so both sides score identical sequences.
    trainer.train_dataset = Dataset.from_list(rows)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.steps + 1)
    trainer.current_gradient_accumulation_steps = 1  # normally set inside Trainer.train()
    loader = iter(trainer.get_train_dataloader())
    times = []
    for _ in range(args.steps + 1):
        inputs = next(loader)
        start = time.perf_counter()
        trainer.training_step(trainer.model, inputs)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def child(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import transformers  # noqa: F401  (imports count towards the baseline, not the method)

    if args.method == "trl_dpo":
        import trl  # noqa: F401
    base = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    phases: dict[str, float] = {}
    if args.method == "trl_dpo":
        with tempfile.TemporaryDirectory() as tmp:
            times = run_trl(args, device, Path(tmp))
    elif args.method in ("rft_round", "rft_round_shared"):
        times, phases = run_rft(args, device, "shared" if args.method.endswith("shared") else "separate")
    else:
        times = run_ours(args.method, args, device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mb() - base
    record = {
        "method": args.method,
        "device": str(device),
        "step_s": times,
        "median_step_s": sorted(times)[len(times) // 2],
        "peak_mb": peak,
        **phases,
    }
    print(json.dumps(record))


def parent(args: argparse.Namespace) -> None:
    results = {}
    for method in args.methods.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--method",
            method,
            "--size",
            args.size,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--prompt-len",
            str(args.prompt_len),
            "--response-len",
            str(args.response_len),
        ]
        cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
        env = dict(os.environ)
        if args.live_memory:
            # glibc keeps freed heap pages, so RSS would remember earlier allocations; serving every allocation
            # of 64 KiB or more with mmap returns freed tensors at once, so peak RSS tracks peak live memory.
            # It also slows allocation down: time ratios come from a run without this flag.
            env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            results[method] = {"error": out.stderr[-2000:]}
            print(f"{method}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{method}: {results[method]['median_step_s']:.3f} s/step, peak {results[method]['peak_mb']:.0f} MB")
    report = {"settings": vars(args) | {"torch": torch.__version__}, "results": results, "ratios": ratios(results)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["ratios"], indent=2))


def ratios(results: dict[str, Any]) -> dict[str, float]:
    def get(method: str, key: str) -> float | None:
        return results.get(method, {}).get(key)

    out: dict[str, float] = {}
    pairs = {
        "irft_cached_vs_sft_time": ("irft_cached", "sft", "median_step_s"),
        "irft_cached_joint_vs_sft_time": ("irft_cached_joint", "sft", "median_step_s"),
        "irft_cached_joint_vs_sft_memory": ("irft_cached_joint", "sft", "peak_mb"),
        "irft_shared_vs_sft_time": ("irft_shared", "sft", "median_step_s"),
        "irft_shared_vs_sft_memory": ("irft_shared", "sft", "peak_mb"),
        "irft_shared_vs_trl_dpo_time": ("irft_shared", "trl_dpo", "median_step_s"),
        "irft_cached_vs_trl_dpo_time": ("irft_cached", "trl_dpo", "median_step_s"),
        "irft_copy_vs_sft_time": ("irft_copy", "sft", "median_step_s"),
        "irft_cached_vs_sft_memory": ("irft_cached", "sft", "peak_mb"),
        "irft_copy_vs_sft_memory": ("irft_copy", "sft", "peak_mb"),
        "trl_dpo_vs_sft_memory": ("trl_dpo", "sft", "peak_mb"),
        "rft_round_shared_vs_rft_round_time": ("rft_round_shared", "rft_round", "median_step_s"),
    }
    for name, (a, b, key) in pairs.items():
        x, y = get(a, key), get(b, key)
        if x is not None and y:
            out[name] = round(x / y, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smollm2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=64)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--live-memory", action="store_true", help="CPU: peak RSS tracks live memory (slower)")
    parser.add_argument("--out", default="benchmarks/results/irft_step.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
