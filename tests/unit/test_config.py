from pathlib import Path

import pytest

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
    files = sorted(root.rglob("*.yaml"))
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
