"""`rewardsft train sft` end to end on tiny in-process models (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from rewardsft.cli import main
from rewardsft.training.metrics import read_metrics
from rewardsft.training.run import Run
from tests.conftest import write_jsonl

FAST = [
    "train.batch_size=8",
    "optim.lr=3e-3",
    "data.max_length=64",
    "data.max_prompt_length=32",
    "logging.progress=false",
    "optim.warmup_ratio=0.0",
]


def sft_args(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "sft", f"model.name_or_path={model_dir}", f"data.path={data}", f"output_dir={out}", *FAST, *extra]


def weights(path: Path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("arch_fixture", ["llama_dir", "neox_dir"])
def test_sft_end_to_end(arch_fixture: str, builtin_jsonl: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(arch_fixture)
    out = tmp_path / "run"
    code = main(
        sft_args(
            model_dir,
            builtin_jsonl,
            out,
            "train.epochs=20",
            "train.save_every=50",
            f"data.eval_path={builtin_jsonl}",
            "train.eval_every=40",
        )
    )
    assert code == 0
    # Artefacts
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["name_or_path"] == str(model_dir)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-100", "step-120"]
    assert (out / "checkpoints" / "step-120" / "model" / "model.safetensors").is_file()
    assert (
        AutoTokenizer.from_pretrained(str(out / "final")).chat_template
        == AutoTokenizer.from_pretrained(str(model_dir)).chat_template
    )
    # Metrics: one record per step, slash-namespaced keys, eval every 40 steps
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 121))
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens", "train/epoch"} <= set(train[0])
    assert [r["step"] for r in records if "eval/loss" in r] == [40, 80, 120, 120]
    # Loss falls on a small memorisable set
    losses = [r["train/loss"] for r in train]
    assert sum(losses[-6:]) / 6 < 0.5 * sum(losses[:6]) / 6
    evals = [r["eval/loss"] for r in records if "eval/loss" in r]
    assert evals[-1] < evals[0]
    # Every trainable parameter changed
    before, after = weights(model_dir), weights(out / "final")
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []


def test_resume_after_a_crash_equals_an_uninterrupted_run(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = [
        "train.max_steps=8",
        "train.save_every=3",
        "train.batch_size=4",
        "train.grad_accum=2",
        "optim.warmup_ratio=0.25",
        "train.keep_checkpoints=5",
    ]
    assert main(sft_args(llama_dir, builtin_jsonl, tmp_path / "whole", *common)) == 0

    crashed = tmp_path / "crashed"
    original_log = Run.log

    def crash_at_step_5(self: Run, step: int, values: dict[str, float]) -> None:
        original_log(self, step, values)
        if step == 5:
            raise RuntimeError("simulated kill")

    monkeypatch.setattr(Run, "log", crash_at_step_5)
    assert main(sft_args(llama_dir, builtin_jsonl, crashed, *common)) == 1
    monkeypatch.setattr(Run, "log", original_log)
    assert [p.name for p in sorted((crashed / "checkpoints").iterdir())] == ["step-3"]
    assert not (crashed / "final").exists()

    assert main(sft_args(llama_dir, builtin_jsonl, crashed, *common)) == 2  # refused without resume=true
    assert main(sft_args(llama_dir, builtin_jsonl, crashed, *common, "resume=true")) == 0

    whole, resumed = weights(tmp_path / "whole" / "final"), weights(crashed / "final")
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    steps = [r["step"] for r in read_metrics(crashed / "metrics.jsonl")]
    assert steps == list(range(1, 9))  # lines logged after the checkpoint were dropped, not duplicated
    losses = [r["train/loss"] for r in read_metrics(crashed / "metrics.jsonl")]
    assert losses == [r["train/loss"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl")]


def test_lora_trains_adapters_and_saves_a_merged_model(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    import peft

    out = tmp_path / "lora"
    assert (
        main(
            sft_args(
                llama_dir,
                builtin_jsonl,
                out,
                "lora.enabled=true",
                "model.gradient_checkpointing=true",
                "lora.r=4",
                "lora.alpha=8",
                "train.max_steps=6",
                "train.save_every=3",
            )
        )
        == 0
    )
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(str(llama_dir))
    with_adapter = peft.PeftModel.from_pretrained(base, str(adapter))
    lora_params = {n: p for n, p in with_adapter.named_parameters() if "lora_" in n}
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora_params}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # Rebuild the run's initial adapter (same seed, same code path): every LoRA parameter, A and B, moved.
    from accelerate.utils import set_seed

    from rewardsft.config import load_config
    from rewardsft.models import load_policy, trainable_parameters

    config = load_config(
        "sft", overrides=[f"model.name_or_path={llama_dir}", "lora.enabled=true", "lora.r=4", "lora.alpha=8"]
    )
    set_seed(config.seed)
    initial = trainable_parameters(load_policy(config.model, config.lora, torch.device("cpu")))
    assert set(initial) == set(lora_params)
    assert all(not torch.equal(p, lora_params[n]) for n, p in initial.items())
    # The merged final model is a plain causal LM that differs from the base.
    merged, base_w = weights(out / "final"), weights(llama_dir)
    assert any(not torch.equal(merged[n], base_w[n]) for n in base_w)
    # Resume from a LoRA checkpoint works too.
    assert (out / "checkpoints" / "step-6" / "adapter" / "adapter_model.safetensors").is_file()
    assert (
        main(
            sft_args(
                llama_dir,
                builtin_jsonl,
                out,
                "lora.enabled=true",
                "model.gradient_checkpointing=true",
                "lora.r=4",
                "lora.alpha=8",
                "train.max_steps=8",
                "train.save_every=3",
                "resume=true",
            )
        )
        == 0
    )


def test_bad_data_exits_2_before_writing_anything(llama_dir: Path, tmp_path: Path, capsys: Any) -> None:
    data = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    out = tmp_path / "run"
    assert main(sft_args(llama_dir, data, out)) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl: row 1, field 'messages': conversation has no assistant turn" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_non_empty_output_dir_is_refused_then_overwritten(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(sft_args(llama_dir, builtin_jsonl, out, "train.max_steps=1")) == 2
    assert (out / "precious.txt").read_text() == "keep me"
    assert main(sft_args(llama_dir, builtin_jsonl, out, "train.max_steps=1", "overwrite=true")) == 0
    assert not (out / "precious.txt").exists() and (out / "final" / "config.json").is_file()


def test_missing_model_is_a_clear_error(
    builtin_jsonl: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(sft_args(tmp_path / "no-such-model", builtin_jsonl, tmp_path / "run")) == 2
    assert "could not load" in capsys.readouterr().err


def test_tiny_model_command_writes_a_loadable_model(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\nthe quick brown fox jumps over the lazy dog\n" * 20)
    assert main(["tiny-model", str(tmp_path / "m"), "--arch", "gpt_neox", "--corpus", str(corpus)]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    assert model.config.model_type == "gpt_neox" and model.config.vocab_size == len(tokenizer)
    assert tokenizer.decode(tokenizer("the lazy dog")["input_ids"]) == "the lazy dog"
    assert tokenizer.chat_template


def test_tensorboard_tracker_and_bad_tracker(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    assert main(sft_args(llama_dir, builtin_jsonl, out, "train.max_steps=2", "logging.report_to=[tensorboard]")) == 0
    assert list(out.rglob("events.out.tfevents.*"))
    assert main(sft_args(llama_dir, builtin_jsonl, tmp_path / "x", "logging.report_to=[neptune]")) == 2
    assert "unknown tracker 'neptune'" in capsys.readouterr().err


def test_packing_trains_the_same_model(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.packing=true through the recipe: the same losses and final weights as padded rows, fewer rows; the
    IRFT recipe refuses the setting, naming what it does instead."""
    from rewardsft.steps import sft

    rows: list[tuple[int, int]] = []
    original = sft.collate_packed
    monkeypatch.setattr(
        sft,
        "collate_packed",
        lambda ex, *a: rows.append((len(ex), len(original(ex, *a)["input_ids"]))) or original(ex, *a),
    )
    outs = {packing: tmp_path / f"packing-{packing}" for packing in ("false", "true")}
    for packing, out in outs.items():
        # data.max_length=128: rows of the built-in data are 20-40 tokens, so two or more fit in a packed row
        args = sft_args(llama_dir, builtin_jsonl, out, "train.max_steps=3", "data.max_rows=24", "data.max_length=128")
        assert main([*args, f"train.packing={packing}"]) == 0
    losses = [
        [r["train/loss"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r] for out in outs.values()
    ]
    assert len(losses[0]) == 3 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    # The packed run packed (a micro-batch whose rows would not shrink keeps one example per row).
    assert len(rows) == 3 and sum(packed for _, packed in rows) < sum(examples for examples, _ in rows)
    padded, packed, initial = (weights(p) for p in (outs["false"] / "final", outs["true"] / "final", llama_dir))
    assert max(float((padded[n] - packed[n]).abs().max()) for n in padded) < 1e-5
    assert all(not torch.equal(padded[n], initial[n]) for n in padded)
    irft = sft_args(llama_dir, builtin_jsonl, tmp_path / "irft", "train.packing=true")
    irft[1] = "irft"
    assert main(irft) == 2
    assert "pair_forward=shared" in capsys.readouterr().err
