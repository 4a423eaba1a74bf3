"""DeepSpeed settings from the launch (training/zero.py): what is taken from the run's config, what is passed
through, and what is refused naming the key. No processes, no DeepSpeed import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardsft.config import load_config
from rewardsft.errors import ConfigError
from rewardsft.training.zero import deepspeed_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ACCELERATE_"):
            monkeypatch.delenv(name)


def test_accelerate_launch_settings_become_a_deepspeed_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    config = load_config("irft", overrides=["train.batch_size=4", "train.max_grad_norm=0.5"])
    settings = deepspeed_settings(config, world_size=2)
    assert settings["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu"},
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    assert (settings["train_micro_batch_size_per_gpu"], settings["train_batch_size"]) == (4, 8)
    assert settings["gradient_accumulation_steps"] == 1  # rewardsft accumulates and marks the boundary itself
    assert settings["gradient_clipping"] == 0.5 and settings["bf16"] == {"enabled": False}
    unclipped = load_config("sft", overrides=["train.max_grad_norm=null"])
    assert deepspeed_settings(unclipped, 1)["gradient_clipping"] == 0.0  # DeepSpeed's "no clipping"


def test_a_deepspeed_json_is_applied_and_auto_values_come_from_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 2, "overlap_comm": True},
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "train_micro_batch_size_per_gpu": "auto",
                "bf16": {"enabled": "auto"},
                "wall_clock_breakdown": False,
            }
        )
    )
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    settings = deepspeed_settings(load_config("sft", overrides=["model.dtype=bfloat16"]), world_size=2)
    assert settings["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert settings["bf16"] == {"enabled": True} and settings["wall_clock_breakdown"] is False
    # model.dtype=auto is bf16 on CUDA: DeepSpeed is told so (its communication and master weights follow it).
    import torch

    auto = deepspeed_settings(load_config("sft"), world_size=2, device=torch.device("cuda"))
    assert auto["bf16"] == {"enabled": True}
    assert deepspeed_settings(load_config("sft"), world_size=2)["bf16"] == {"enabled": False}  # CPU: float32


def test_float16_weights_train_under_deepspeeds_loss_scaler_with_the_jsons_scaler_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "ds.json"
    scaler = {"initial_scale_power": 12, "hysteresis": 1, "min_loss_scale": 4}
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "fp16": {"enabled": "auto", **scaler}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    settings = deepspeed_settings(load_config("sft", overrides=["model.dtype=float16"]), world_size=2)
    assert settings["fp16"] == {"enabled": True, **scaler} and settings["bf16"] == {"enabled": False}
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert deepspeed_settings(load_config("sft", overrides=["model.dtype=float16"]), 2)["fp16"] == {"enabled": True}
    assert deepspeed_settings(load_config("sft"), 2)["fp16"] == {"enabled": False}


def test_accelerate_refusals_hold_beside_a_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true")
    with pytest.raises(ConfigError, match="zero3_init_flag"):
        deepspeed_settings(load_config("sft"), world_size=2)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "false")
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", "5.0")
    with pytest.raises(ConfigError, match="the accelerate config"):
        deepspeed_settings(load_config("sft"), world_size=2)


@pytest.mark.parametrize(
    ("content", "overrides", "message"),
    [
        ({"zero_optimization": {"stage": 3}, "optimizer": {"type": "AdamW"}}, [], "'optimizer' section"),
        ({"zero_optimization": {"stage": 3}, "scheduler": {"type": "WarmupLR"}}, [], "'scheduler' section"),
        ({"zero_optimization": {"stage": 3}, "fp16": {"enabled": True}}, [], "fp16.enabled=True"),
        ({"zero_optimization": {"stage": 3}, "fp16": {"auto_cast": True}}, ["model.dtype=float16"], "fp16.auto_cast"),
        ({"zero_optimization": {"stage": 1}}, [], "stage=1"),
        ({"zero_optimization": {"stage": 3}, "gradient_accumulation_steps": 4}, [], "train.grad_accum is 1"),
        ({"zero_optimization": {"stage": 3}, "gradient_clipping": 2.0}, [], "train.max_grad_norm is 1.0"),
        ({"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}, [], "bf16.enabled=True"),
        ({"zero_optimization": {"stage": 3}, "torch_autocast": {"enabled": True}}, [], "torch_autocast not applied"),
        ({"zero_optimization": {"stage": 3}, "train_batch_size": 64}, [], "train_batch_size=64"),
        ({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}, [], "nvme"),
        (
            {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False}},
            [],
            "stage3_gather_16bit_weights_on_model_save=false",
        ),
    ],
)
def test_what_the_run_does_not_apply_is_refused_naming_it(
    content: dict, overrides: list[str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(content))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as error:
        deepspeed_settings(load_config("sft", overrides=overrides), world_size=2)
    assert str(path) in str(error.value) or overrides


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true", "zero3_init_flag"),
        ("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "false", "zero3_save_16bit_model"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "nvme", "nvme"),
        ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "8", "gradient_accumulation_steps=8"),
        ("ACCELERATE_DEEPSPEED_MOE_LAYER_CLS_NAMES", "MixtralSparseMoeBlock", "moe"),
    ],
)
def test_accelerate_deepspeed_settings_the_run_does_not_apply_are_refused(
    variable: str, value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        deepspeed_settings(load_config("sft"), world_size=2)


@pytest.mark.parametrize(
    ("method", "overrides", "env", "message"),
    [
        ("irft", ["lora.enabled=true", "irft.snapshot=lora"], {}, "irft.snapshot=lora is not supported with deep"),
        ("irft", ["irft.snapshot=copy"], {}, "irft.snapshot=copy is not supported with deepspeed-zero3"),
        ("sft", [], {"ACCELERATE_USE_FSDP": "true"}, "both DeepSpeed and FSDP"),
        ("rft", ["model.dtype=float16"], {}, "RFT's reward model trains outside it"),
    ],
)
def test_deepspeed_launches_refuse_what_they_cannot_do(
    method: str, overrides: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from tests.unit.test_sharding import FakeAccelerator, open_engine

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(ConfigError, match=message):
        open_engine(FakeAccelerator(), load_config(method, overrides=overrides))
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    engine = open_engine(FakeAccelerator(), load_config("irft"))
    assert (engine.name, engine.sharded) == ("deepspeed-zero3", True)
    lora = open_engine(FakeAccelerator(), load_config("sft", overrides=["lora.enabled=true"]))  # LoRA runs under it
    assert lora.name == "deepspeed-zero3"
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    engine = open_engine(FakeAccelerator(), load_config("irft", overrides=["irft.snapshot=copy"]))
    assert (engine.name, engine.sharded) == ("deepspeed-zero2", False)  # ZeRO-2 keeps whole parameters


def test_deepspeed_outside_a_distributed_launch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_sharding import FakeAccelerator, open_engine

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="not a distributed launch"):
        open_engine(FakeAccelerator(1), load_config("sft"))


def test_shipped_deepspeed_configs_parse_and_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/accelerate/zero*.yaml load with accelerate's own loader and export what rewardsft applies."""
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
    stages = {}
    for file in sorted(folder.glob("zero*.yaml")):
        ds = load_config_from_file(str(file)).deepspeed_config
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", str(ds["zero_stage"]))
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", ds["offload_optimizer_device"])
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", ds["offload_param_device"])
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", str(ds["zero3_init_flag"]).lower())
        zero = deepspeed_settings(load_config("irft"), world_size=4)["zero_optimization"]
        stages[file.name] = (zero["stage"], "offload_param" in zero)
    assert stages == {"zero2.yaml": (2, False), "zero3.yaml": (3, False), "zero3_offload.yaml": (3, True)}


@pytest.mark.parametrize("deepspeed", [True, False])
def test_lockstep_decoding_is_a_zero3_setting(deepspeed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tests.unit.test_sharding import FakeAccelerator, open_engine

    if deepspeed:
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    config = load_config("rft", overrides=["generation.zero3_gather=false"])
    with pytest.raises(ConfigError, match=r"generation\.zero3_gather=false applies under .*ZeRO-3 only"):
        open_engine(FakeAccelerator(), config)
    if deepspeed:
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
        engine = open_engine(FakeAccelerator(), config)
        assert (engine.name, engine.gather_for_decoding) == ("deepspeed-zero3", False)
