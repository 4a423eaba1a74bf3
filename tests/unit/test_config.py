import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rewardsft.cli import main
from rewardsft.config import load_config, parse_overrides
from rewardsft.errors import ConfigError


def test_overrides_are_nested_and_typed() -> None:
    assert parse_overrides(["optim.lr=0.5", "lora.enabled=true", "a.b.c=3"]) == {
        "optim": {"lr": 0.5},
        "lora": {"enabled": True},
        "a": {"b": {"c": 3}},
    }


def test_overrides_win_over_file_which_wins_over_method_defaults(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("optim:\n  lr: 1.0e-4\n  name: adamw\ntrain:\n  batch_size: 4\n")
    config = load_config("irft", file, ["optim.lr=3e-3"])
    assert config.optim.lr == 3e-3  # YAML 1.1 reads 3e-3 as text; we accept it as a float
    assert config.optim.name == "adamw"  # file beats the irft preset (rmsprop)
    assert config.train.batch_size == 4


def test_irft_defaults_follow_the_paper() -> None:
    config = load_config("irft")
    assert (config.optim.name, config.optim.lr, config.optim.schedule) == ("rmsprop", 5e-7, "linear")
    assert config.optim.warmup_ratio == 0.1 and config.irft.beta == 0.1


def test_unknown_key_names_the_closest_valid_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'; did you mean 'optim\.lr'"):
        load_config("sft", overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config("sft", overrides=["trian.epochs=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=two", "train.batch_size' must be int"),
        ("train.batch_size=true", "train.batch_size' must be int"),
        ("optim.name=sgd", "is not one of adamw, rmsprop"),
        ("lora.target_modules=5", "does not fit"),
        ("data.max_prompt_length=600", "max_prompt_length must be < data.max_length"),
        ("optim=3", "must be a mapping"),
    ],
)
def test_bad_values_are_rejected(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("sft", overrides=[override])


def test_list_and_optional_values() -> None:
    config = load_config(
        "sft", overrides=["lora.enabled=true", "lora.target_modules=[q_proj, v_proj]", "train.max_steps=null"]
    )
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.train.max_steps is None


def test_config_show_prints_resolved_yaml_that_loads_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "irft", "irft.stages=3", "model.name_or_path=m"]) == 0
    text = capsys.readouterr().out
    saved = tmp_path / "resolved.yaml"
    saved.write_text(text)
    again = load_config("irft", saved)
    assert again.irft.stages == 3 and again.model.name_or_path == "m" and again.optim.lr == 5e-7


def test_cli_bad_config_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "sft", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key") and "Traceback" not in err


def test_method_mismatch_in_file(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("method: irft\n")
    with pytest.raises(ConfigError, match="method"):
        load_config("sft", file)


def test_every_shipped_config_resolves() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(f for f in root.rglob("*.yaml") if "accelerate" not in f.parts)  # accelerate's own format
    assert files
    for file in files:
        import yaml

        method = yaml.safe_load(file.read_text()).get("method", "sft")
        load_config(method, file)


def test_cli_overrides_before_and_after_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    file = tmp_path / "c.yaml"
    file.write_text("train:\n  epochs: 3\n")
    assert main(["config", "show", "sft", "seed=7", "--config", str(file), "optim.lr=0.25"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["seed"], shown["train"]["epochs"], shown["optim"]["lr"]) == (7, 3, 0.25)


def test_config_file_with_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_bytes(b"optim:\n  lr: 1.0e-5\ndata:\n  system_prompt: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line 4: not valid UTF-8"):
        load_config("sft", file)


@pytest.mark.parametrize(
    ("method", "override", "message"),
    [
        ("sft", "irft.stages=3", "'irft.stages' is not used by `rewardsft train sft`"),
        ("sft", "generation.max_new_tokens=9", "SFT does not generate"),
        ("irft", "rft.iterations=3", "read by `rewardsft train rft` only"),
        ("irft", "reward_model.lr=1e-3", "implicit"),
        ("rft", "train.epochs=3", "set rft.iterations"),
        ("rft", "train.max_steps=3", "set rft.iterations"),
        ("rft", "train.grad_accum=2", "one RFT optimiser step covers a whole round"),
        ("rft", "irft.beta=0.2", "read by `rewardsft train irft` only"),
        ("sft", "lora.r=8", "LoRA is off"),
        ("irft", "train.eval_every=5", "no held-out data"),
        ("sft", "train.eval_batch_size=4", "held-out data only"),
        ("irft", "optim.betas=[0.8,0.9]", "RMSprop has no betas"),
        ("irft", "generation.temperature=0.5 generation.do_sample=false", "decodes greedily"),
        ("rft", "rft.preference_path=prefs.jsonl", "rft.preference_weight is 0"),
        ("rft", "rft.preference_weight=0.5", "needs rft.preference_path"),
    ],
)
def test_settings_a_method_does_not_read_are_refused(method: str, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(method, overrides=override.split(" "))


def test_lora_dropout_is_refused_while_dropout_is_off_and_a_full_dump_loads_back(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'lora.dropout' is not used .*train.dropout=false"):
        load_config("irft", overrides=["lora.enabled=true", "lora.dropout=0.1"])
    assert load_config("irft", overrides=["lora.enabled=true", "lora.dropout=0.1", "train.dropout=true"])
    # `config show` output (every key, at its default) is a valid starting file for the same method.
    dump = tmp_path / "dump.yaml"
    dump.write_text(load_config("rft").to_yaml())
    assert load_config("rft", dump).rft.iterations == 20


@pytest.mark.parametrize(
    "override",
    ["generation.temperature=0.7", "generation.top_p=0.9", "generation.top_k=50", "generation.do_sample=false"],
)
def test_rft_refuses_sampling_that_is_not_the_policy(override: str) -> None:
    with pytest.raises(ConfigError, match="RLOO"):
        load_config("rft", overrides=[override])
    assert load_config("irft", overrides=[override])  # IRFT's theory samples too, but nothing there goes off-policy


def test_one_of_each_default_rendering_and_version() -> None:
    import tomllib
    from dataclasses import asdict
    from pathlib import Path

    import rewardsft
    from rewardsft.config import DataConfig
    from rewardsft.data.tokenize import RenderSettings
    from rewardsft.layout import render_settings

    # a model that is not a run is evaluated as a default run trains, through the one mapping
    assert render_settings(DataConfig()) == RenderSettings()
    assert asdict(render_settings(DataConfig(max_length=64, text_prompts="user_turn")))["max_length"] == 64
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert project["version"] == rewardsft.__version__


def test_each_method_has_its_own_config_type_and_show_prints_only_its_keys(capsys: Any) -> None:
    from rewardsft.config import CONFIG_TYPES, IRFTConfig, RFTConfig, SFTConfig

    assert {m: type(load_config(m)) for m in ("sft", "irft", "rft")} == CONFIG_TYPES
    assert {"sft": SFTConfig, "irft": IRFTConfig, "rft": RFTConfig} == CONFIG_TYPES
    shown = {}
    for method in ("sft", "irft", "rft"):
        assert main(["config", "show", method]) == 0
        shown[method] = set(yaml.safe_load(capsys.readouterr().out))
    common = {"method", "output_dir", "seed", "resume", "overwrite", "model", "lora", "data", "train", "optim"}
    assert shown["sft"] == common | {"logging"}
    assert shown["irft"] == shown["sft"] | {"generation", "sft_phase", "irft"}
    assert shown["rft"] == shown["sft"] | {"generation", "sft_phase", "rft", "reward_model"}


@pytest.mark.parametrize(
    ("dumped", "loaded", "setting", "message"),
    [
        (
            "irft",
            "sft",
            "generation.max_new_tokens=9",
            "'generation.max_new_tokens' is not used by `rewardsft train sft`: SFT does not generate",
        ),
        (
            "rft",
            "irft",
            "rft.iterations=3",
            "'rft.iterations' is not used by `rewardsft train irft`: the rft section is read by",
        ),
        (
            "irft",
            "rft",
            "irft.stages=3",
            "'irft.stages' is not used by `rewardsft train rft`: the irft section is read by",
        ),
    ],
)
def test_a_full_dump_loads_for_its_method_and_a_key_of_another_method_names_itself(
    tmp_path: Path, dumped: str, loaded: str, setting: str, message: str
) -> None:
    dump = tmp_path / "dump.yaml"
    dump.write_text(load_config(dumped).to_yaml())
    assert load_config(dumped, dump).to_dict() == load_config(dumped).to_dict()
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(loaded, overrides=[setting])
    # A file of the other method's full dump with that key set: refused by the same name.
    body = yaml.safe_load(dump.read_text())
    body.pop("method")
    section, key = setting.split("=")[0].split(".")
    body.setdefault(section, {})[key] = yaml.safe_load(setting.split("=")[1])
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(loaded, mixed)


def test_a_run_recorded_with_every_section_still_reads(tmp_path: Path) -> None:
    """config.yaml files written before each method had its own type carry every section at its defaults, some
    without keys added since (generation.dtype and generation.cache came later): they read, and continue a run."""
    from rewardsft.config import config_from_dict

    legacy = load_config("irft").to_dict() | load_config("rft").to_dict() | load_config("sft").to_dict()
    assert {"irft", "rft", "reward_model", "generation"} <= set(legacy)
    del legacy["generation"]["dtype"], legacy["generation"]["cache"]
    assert config_from_dict(legacy).to_dict() == load_config("sft").to_dict()
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump(legacy))
    assert load_config("sft", old).to_dict() == load_config("sft").to_dict()
    legacy["rft"]["iterations"] = 3  # a foreign section off its default is not a harmless leftover
    with pytest.raises(ConfigError, match=re.escape("'rft.iterations' is not used by `rewardsft train sft`")):
        config_from_dict(legacy)


def test_the_literal_choices_are_the_enums() -> None:
    import typing

    from rewardsft.config import DataConfig, IRFTSettings
    from rewardsft.data.formats import FORMATS
    from rewardsft.losses import IRFTLoss

    assert typing.get_args(typing.get_type_hints(IRFTSettings)["loss"]) == tuple(loss.value for loss in IRFTLoss)
    assert typing.get_args(typing.get_type_hints(DataConfig)["format"]) == ("auto", *FORMATS)
