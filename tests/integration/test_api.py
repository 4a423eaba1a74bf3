"""The Python API (issue 13): train from Python on the CLI's code path, load what it returns, settings in every
accepted form, one exception type, Hub model cards, and the README's Python block run as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import rewardsft
from rewardsft.cli import main
from rewardsft.model_card import card_metadata
from tests.integration.test_sft import weights

ROOT = Path(__file__).resolve().parents[2]


def common(model: Path, data: Path) -> dict[str, object]:
    return {
        "model": {"name_or_path": model},
        "data": {"path": data, "max_length": 64, "max_prompt_length": 32},
        "logging": {"progress": False},
    }


def test_settings_in_every_form_resolve_alike(llama_dir: Path, builtin_jsonl: Path) -> None:
    cli_style = rewardsft.load_config(
        "irft", overrides=["optim.lr=1e-4", "irft.stages=2", f"data.path={builtin_jsonl}"]
    )
    dotted = rewardsft.load_config("irft", overrides={"optim.lr": 1e-4, "irft.stages": 2, "data.path": builtin_jsonl})
    nested = rewardsft.load_config("irft", optim={"lr": 1e-4}, irft={"stages": 2}, data={"path": str(builtin_jsonl)})
    mixed = rewardsft.load_config(
        "irft", overrides={"optim": {"lr": 1e-4}}, irft={"stages": 2}, data={"path": builtin_jsonl}
    )
    assert cli_style.to_dict() == dotted.to_dict() == nested.to_dict() == mixed.to_dict()
    assert cli_style.optim.lr == 1e-4 and cli_style.irft.stages == 2 and cli_style.optim.name == "rmsprop"
    # keyword settings win over the overrides mapping, which wins over the file
    assert rewardsft.load_config("sft", overrides={"optim.lr": 1e-3}, optim={"lr": 2e-3}).optim.lr == 2e-3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rewardsft.load_config("dpo"), "unknown method"),
        (lambda: rewardsft.load_config("sft", optim={"lr": "fast"}), "optim.lr"),
        (lambda: rewardsft.load_config("sft", optimizer={"lr": 1e-3}), "optimizer"),
        (lambda: rewardsft.load_config("rft", train={"epochs": 3}), "rft.iterations"),
        (lambda: rewardsft.load_config("sft", overrides="optim.lr=1"), "not the string"),
        (lambda: rewardsft.load_config("sft", overrides={"optim..lr": 1}), "dotted setting name"),
        (
            lambda: rewardsft.train("sft", model={"name_or_path": "/no/such/model"}, data={"path": "/no/such.jsonl"}),
            "/no/such",
        ),
    ],
)
def test_bad_input_raises_config_error(call: object, message: str) -> None:
    with pytest.raises(rewardsft.ConfigError, match=re.escape(message)):
        call()  # type: ignore[operator]


def test_train_sft_irft_rft_from_python_returns_paths_that_load(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    base = weights(llama_dir)
    shared = common(llama_dir, builtin_jsonl)
    sft = rewardsft.train(
        "sft", overrides={"train.max_steps": 3}, output_dir=tmp_path / "sft", optim={"lr": 1e-3}, **shared
    )
    irft = rewardsft.train(
        "irft",
        overrides={"irft.stages": 2, "optim.lr": 1e-3, "generation.max_new_tokens": 8, "train.max_steps": 4},
        output_dir=tmp_path / "irft",
        **shared,
    )
    rft = rewardsft.train(
        "rft",
        output_dir=tmp_path / "rft",
        rft={"iterations": 2, "prompts_per_iteration": 8, "samples_per_prompt": 2},
        generation={"max_new_tokens": 8},
        optim={"lr": 1e-3},
        **shared,
    )
    for result, method in ((sft, "sft"), (irft, "irft"), (rft, "rft")):
        assert isinstance(result, rewardsft.RunResult) and result.config is not None
        assert result.config.method == method and result.output_dir == tmp_path / method
        trained = weights(result.final_dir)
        assert all(not torch.equal(trained[k], base[k]) for k in base), f"{method}: some weights did not change"
        card = ModelCard.load(result.final_dir / "README.md")
        assert "rewardsft" in card.data.tags and method in card.data.tags
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
        assert "base_model" not in card.data.to_dict()  # a local folder is not a Hub id
        assert str(llama_dir) in card.text and "## Settings" in card.text
    assert sft.metrics["train/loss"] > 0 and "irft/margin" in irft.metrics and "rm/accuracy" in rft.metrics
    assert sft.reward_model_dir is None and irft.adapter_dir is None and rft.reward_model_dir is not None

    reward = rewardsft.RewardModel.from_pretrained(rft.reward_model_dir)
    scores = reward.score(["Q: What is 2+2?\nA:"] * 2, ["4", "five"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
    rm_card = ModelCard.load(rft.reward_model_dir / "README.md")
    assert {"rewardsft", "rft", "reward-model"} <= set(rm_card.data.tags)
    assert rm_card.data.pipeline_tag == "text-classification"
    with pytest.raises(rewardsft.ConfigError, match="one response per prompt"):
        reward.score(["a", "b"], ["only one"])

    # train() on a RunConfig, and the finished-run guard of the CLI
    config = rewardsft.load_config("sft", output_dir=tmp_path / "sft", **shared)
    with pytest.raises(rewardsft.ConfigError, match="overwrite"):
        rewardsft.train(config)


def test_card_metadata_names_hub_ids_spin_and_the_base_license(tmp_path: Path) -> None:
    config = {
        "method": "irft",
        "irft": {"stages": 1},
        "model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "data": {"path": "HuggingFaceH4/ultrachat_200k"},
    }
    meta = card_metadata(config)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["HuggingFaceH4/ultrachat_200k"]
    assert meta["tags"] == ["rewardsft", "irft", "spin"] and "license" not in meta
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# base\n")
    local = card_metadata({"method": "sft", "model": {"name_or_path": str(base)}, "data": {"path": "d.jsonl"}})
    assert local["license"] == "apache-2.0" and "base_model" not in local and "datasets" not in local


def test_public_names_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    for name in rewardsft.__all__:
        assert getattr(rewardsft, name) is not None
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"rewardsft {rewardsft.__version__}"
    assert main(["env"]) == 0
    printed = capsys.readouterr().out
    for key in ("python:", "torch:", "transformers:", "accelerate:", "peft:", "datasets:", "device: cpu"):
        assert key in printed


def readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"The same from Python.*?```python\n(.*?)```", text, re.DOTALL)
    assert match, "README: the Python block after 'The same from Python' is missing"
    return match.group(1)


def test_readme_python_block_runs_as_written(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    assert main(["tiny-model", str(tmp_path / "runs" / "tiny"), "--arch", "llama"]) == 0
    script = tmp_path / "readme_block.py"
    script.write_text(readme_python_block())
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "py-report" / "report.md").is_file()
    assert (tmp_path / "runs" / "py-rft" / "reward_model" / "README.md").is_file()
    lines = done.stdout.splitlines()
    assert any(line.startswith("py-sft ") for line in lines) and any(line.startswith("py-irft ") for line in lines)
    scores = [line for line in lines if re.fullmatch(r"\[-?[\d.e-]+, -?[\d.e-]+\]", line)]
    assert len(scores) == 1, lines[-5:]
