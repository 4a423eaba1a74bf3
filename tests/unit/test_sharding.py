"""The sharding helpers that run without processes: settings checks, optimiser-state rekeying, the shipped
accelerate configs. The sharded training itself is in tests/integration/test_fsdp.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rewardsft.errors import ConfigError
from rewardsft.sharding import (
    _by_name,
    agreed_max,
    check_fsdp_settings,
    is_sharded,
    keyed_by_name,
    load_optimizer_state,
)

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def test_position_keyed_state_is_rekeyed_by_trainable_parameter_name() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    assert not keyed_by_name(state)
    named = _by_name(model, state)
    assert keyed_by_name(named)
    assert list(named["state"]) == ["0.weight", "1.weight", "1.bias"]  # the frozen bias is skipped
    assert torch.equal(named["state"]["1.bias"]["exp_avg"], state["state"][2]["exp_avg"])
    assert named["param_groups"][0]["params"] == ["0.weight", "1.weight", "1.bias"]


def test_name_keyed_state_loads_into_a_plain_model() -> None:
    """A sharded run's checkpoint (state keyed by name) resumes on one unsharded process."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2)
    first = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    first.step()
    second = torch.optim.AdamW(model.parameters(), lr=0.1)
    load_optimizer_state(model, second, _by_name(model, first.state_dict()))
    assert torch.equal(second.state_dict()["state"][0]["exp_avg_sq"], first.state_dict()["state"][0]["exp_avg_sq"])


def test_plain_models_are_not_sharded_and_need_no_lockstep() -> None:
    model = torch.nn.Linear(2, 2)
    assert not is_sharded(model)
    assert agreed_max(3, model) == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FSDP_VERSION": "1"}, "FSDP2 only"),
        ({"FSDP_OFFLOAD_PARAMS": "true"}, "not supported"),
        ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, "gradient_checkpointing"),
    ],
)
def test_unsupported_fsdp_settings_are_refused(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        check_fsdp_settings()


def test_shipped_accelerate_configs_parse_and_fsdp_ones_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file loads with accelerate's own config loader; the FSDP ones export settings rewardsft accepts (the
    DeepSpeed ones: tests/unit/test_zero_settings.py)."""
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted(f for f in ACCELERATE_CONFIGS.glob("*.yaml") if not f.name.startswith("zero"))
    assert [f.name for f in files] == ["ddp.yaml", "fsdp.yaml", "fsdp_grad_op.yaml"]
    for file in files:
        config = load_config_from_file(str(file))
        if config.distributed_type.value != "FSDP":
            continue
        fsdp = config.fsdp_config
        monkeypatch.setenv("FSDP_VERSION", str(fsdp["fsdp_version"]))
        monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", str(fsdp["fsdp_offload_params"]).lower())
        monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", str(fsdp["fsdp_activation_checkpointing"]).lower())
        check_fsdp_settings()
    reshard = {f.name: load_config_from_file(str(f)).fsdp_config.get("fsdp_reshard_after_forward") for f in files}
    assert reshard == {"ddp.yaml": None, "fsdp.yaml": True, "fsdp_grad_op.yaml": False}


class FakeAccelerator:
    def __init__(self, processes: int = 2, mixed_precision: str = "no"):
        from accelerate.utils import DistributedType

        self.distributed_type = DistributedType.MULTI_CPU
        self.num_processes = processes
        self.mixed_precision = mixed_precision
        self.device = torch.device("cpu")


def engine_rules(method: str) -> Any:
    """The rules ``method``'s recipe adds to the engine's (None for SFT)."""
    from rewardsft.steps.rollout import RFT_RULES
    from rewardsft.steps.stages import IRFT_RULES

    return {"irft": IRFT_RULES, "rft": RFT_RULES}.get(method)


def open_engine(accelerator: Any, config: Any) -> Any:
    """The engine a run of ``config`` gets on ``accelerator``, its method's rules checked (what ``Run`` does)."""
    from rewardsft.training.engine import engine_for

    engine = engine_for(accelerator, config)
    rules = engine_rules(config.method)
    if rules is not None and rules.check is not None:
        rules.check(engine, config)
    return engine


@pytest.mark.parametrize(
    ("method", "overrides", "accelerator", "message"),
    [
        ("rft", {"rft": {"prompts_per_iteration": 7}}, FakeAccelerator(), "does not split evenly over 2"),
        ("irft", {"irft": {"snapshot": "copy"}}, FakeAccelerator(), "irft.snapshot=copy is not supported with fsdp2"),
        ("sft", {"lora": {"enabled": True}}, FakeAccelerator(), "lora"),
        ("sft", {}, FakeAccelerator(mixed_precision="fp16"), "mixed_precision=fp16"),
    ],
)
def test_fsdp_runs_refuse_what_they_cannot_do(
    method: str, overrides: dict, accelerator: FakeAccelerator, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rewardsft.config import load_config

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    config = load_config(method, None, overrides)
    with pytest.raises(ConfigError, match=message):
        open_engine(accelerator, config)
    engine = open_engine(FakeAccelerator(), load_config("sft", None, {}))
    assert (engine.name, engine.sharded) == ("fsdp2", True)
    assert open_engine(FakeAccelerator(), load_config("irft", None, {})).sharded  # the cached snapshot is fine


def test_fsdp_without_a_distributed_launch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from rewardsft.config import load_config

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="not a distributed launch"):
        open_engine(FakeAccelerator(1), load_config("sft", None, {}))


def test_uneven_rft_rounds_are_refused_without_fsdp_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP an uneven split would not hang, but each process averages its own samples, so samples on the
    process with fewer would weigh more than in one process."""
    from rewardsft.config import load_config

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(ConfigError, match="choose a multiple of the number of processes"):
        open_engine(FakeAccelerator(2), load_config("rft", None, {"rft": {"prompts_per_iteration": 7}}))
    engine = open_engine(FakeAccelerator(2), load_config("rft", None, {"rft": {"prompts_per_iteration": 8}}))
    assert (engine.name, engine.sharded) == ("ddp", False)
    assert not engine_rules("rft").data_plan and engine_rules("irft").data_plan  # RFT resumes under any batch
