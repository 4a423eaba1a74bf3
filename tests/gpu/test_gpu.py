"""On one CUDA GPU: the three recipes in bf16, FSDP2 and DeepSpeed ZeRO-3 through torchrun (NCCL), and the
attention kernels.

Run by ``benchmarks/gpu_check.sh`` (``pytest -m gpu tests/gpu``); skipped everywhere else. The CPU tier proves
the same code paths in fp32 under gloo (tests/integration/test_fsdp.py); these check what only a GPU has: the
bf16 default, NCCL, the CUDA RNG in checkpoints and the fused attention kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rewardsft.cli import main
from rewardsft.data.builtin import builtin_rows
from rewardsft.data.collate import batch_on
from rewardsft.data.tokenize import TokenizedExample
from rewardsft.logprobs import model_token_logps
from rewardsft.training.metrics import read_metrics
from tests.integration.test_irft import irft_args
from tests.integration.test_rft import rft_args
from tests.integration.test_sft import sft_args

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
IRFT_FSDP = [
    "data.max_rows=30",
    "irft.stages=2",
    "generation.batch_size=4",
    "generation.do_sample=false",
    "model.dtype=float32",
]


def unchanged(initial: Path, final: Path) -> list[str]:
    """Names of the tensors training did not move (initial weights rounded to the final dtype first, so rounding
    to bf16 alone does not count as a change)."""
    a, b = load_file(str(initial / "model.safetensors")), load_file(str(final / "model.safetensors"))
    return [n for n in a if torch.equal(a[n].to(b[n].dtype), b[n])]


@pytest.mark.parametrize("method", ["sft", "irft", "rft"])
def test_recipe_on_cuda_in_bf16(method: str, llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / method
    train, _ = split_data
    args = {
        "sft": lambda: sft_args(llama_dir, train, out),
        # The static KV cache compiles the decode step on GPU: exercised in a whole run here.
        "irft": lambda: irft_args(llama_dir, train, out, "irft.stages=2", "generation.cache=static"),
        "rft": lambda: rft_args(llama_dir, split_data, out),
    }[method]()
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["device"].startswith("cuda")
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"  # model.dtype=auto is bf16 on CUDA, the paper's setting
    assert unchanged(llama_dir, out / "final") == []
    losses = [r for r in read_metrics(out / "metrics.jsonl") if any(k.endswith("loss") for k in r)]
    assert losses and all(torch.isfinite(torch.tensor(v)) for r in losses for v in r.values())


SHARDED_ENV = {
    "fsdp2": {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"},
    "deepspeed-zero3": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"},
}


@pytest.mark.parametrize("engine", list(SHARDED_ENV))
def test_sharded_on_one_gpu_matches_unsharded(
    engine: str, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """torchrun + NCCL + fully_shard (or DeepSpeed ZeRO-3) on one GPU (a one-process mesh still shards every
    parameter, under ZeRO-3 through test_deepspeed.zero's JSON with no persistent parameters, so the gather, lockstep and
    full-state-dict paths all run) against the plain one-process run, fp32."""
    if engine.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    assert main(irft_args(llama_dir, builtin_jsonl, plain, *IRFT_FSDP)) == 0
    env = {**os.environ, **SHARDED_ENV[engine]}
    if engine == "deepspeed-zero3":
        from tests.integration.test_deepspeed import zero

        env = {**os.environ, **zero(3)}  # every parameter partitioned (none kept whole as "persistent")
    # torchrun as a module of this Python: gpu_check.sh runs a system python3 whose torchrun may live elsewhere.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        "-m",
        "rewardsft.cli",
    ]
    result = subprocess.run(
        [*cmd, *irft_args(llama_dir, builtin_jsonl, sharded, *IRFT_FSDP)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((sharded / "run.json").read_text())["engine"] == engine
    a = [r["irft/loss"] for r in read_metrics(plain / "metrics.jsonl") if "irft/loss" in r]
    b = [r["irft/loss"] for r in read_metrics(sharded / "metrics.jsonl") if "irft/loss" in r]
    assert len(a) == len(b) >= 2 and b == pytest.approx(a, rel=1e-4, abs=1e-5)
    assert AutoModelForCausalLM.from_pretrained(str(sharded / "final")).num_parameters() > 0


def test_attention_kernels_agree(llama_dir: Path, tokenizer: object) -> None:
    """sdpa and eager give the same log-probs on a padded batch (fp32), and bf16 sdpa stays close."""
    encode = tokenizer.encode  # type: ignore[attr-defined]
    turns = [row["messages"] for row in builtin_rows()[:6]]
    examples = [TokenizedExample(encode(t[0]["content"]), encode(t[1]["content"]), i) for i, t in enumerate(turns)]
    device = torch.device("cuda")
    batch = batch_on(examples, 0, device)
    results = {}
    for name, dtype in [("eager", torch.float32), ("sdpa", torch.float32), ("sdpa", torch.bfloat16)]:
        model = AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=dtype, attn_implementation=name)
        with torch.no_grad():
            out = model_token_logps(model.to(device).eval(), **batch)
        results[(name, dtype)] = (out.logps * out.mask).float()
    reference = results[("eager", torch.float32)]
    assert torch.allclose(results[("sdpa", torch.float32)], reference, atol=1e-4)
    assert float((results[("sdpa", torch.bfloat16)] - reference).abs().max()) < 0.1
