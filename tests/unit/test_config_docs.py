"""Every config key is documented, and ``config show`` prints the documentation beside valid YAML."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from rewardsft.cli import main
from rewardsft.config import CONFIG_TYPES, field_doc, load_config, to_commented_yaml


def _walk(cls: type, prefix: str = "") -> list[tuple[str, type, str]]:
    """(dotted key, class, field name) of every field, sections included, recursively from ``cls``."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        keys.append((f"{prefix}{f.name}", cls, f.name))
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _walk(hints[f.name], f"{prefix}{f.name}.")
    return keys


def test_every_config_key_has_a_docstring() -> None:
    keys = list(dict.fromkeys(key for config_type in CONFIG_TYPES.values() for key in _walk(config_type)))
    assert len({dotted for dotted, _, _ in keys}) > 80  # the walk reached every section
    missing = [dotted for dotted, cls, name in keys if not field_doc(cls, name).strip()]
    assert not missing, f"config keys without a docstring: {', '.join(missing)}"


OVERRIDES = {
    "sft": [
        'data.system_prompt="You are: #1"',  # a colon and a '#' must be quoted
        "train.max_steps=null",
        "train.eval_every=7",
        "data.eval_split=test",
        "logging.report_to=[tensorboard]",
        "lora.enabled=true",
        "lora.target_modules=[q_proj, 'v: proj']",
        "model.name_or_path='yes'",  # a YAML 1.1 boolean word, as a string
        "model.revision='0123'",  # digits, as a string
    ],
    "irft": [
        'data.system_prompt="You are: #1\\n  line two"',
        "irft.stages=3",
        "irft.beta=0.25",
        "optim.name=adamw",
        "optim.betas=[0.8, 0.99]",
        "data.max_rows=null",
        "output_dir='runs/x #y'",
    ],
    "rft": [
        "data.system_prompt='- leading dash & *star'",
        "rft.reward_clip=5",
        "rft.preference_path=null",
        "optim.lr=3e-6",
        "reward_model.name_or_path='org/rm: v2'",
        "logging.report_to=[]",
    ],
}


@pytest.mark.parametrize("method", ["sft", "irft", "rft"])
def test_commented_yaml_loads_back_to_the_config(method: str) -> None:
    for overrides in ([], OVERRIDES[method]):
        config = load_config(method, overrides=overrides)
        text = to_commented_yaml(config)
        assert yaml.safe_load(text) == config.to_dict()
        assert yaml.safe_load(text) == yaml.safe_load(config.to_yaml())
        assert "# " in text


def test_commented_yaml_keeps_none_lists_and_special_strings() -> None:
    config = load_config("sft", overrides=OVERRIDES["sft"])
    assert config.data.system_prompt == "You are: #1" and config.train.max_steps is None
    loaded = yaml.safe_load(to_commented_yaml(config))
    assert loaded["data"]["system_prompt"] == "You are: #1"
    assert loaded["train"]["max_steps"] is None
    assert loaded["lora"]["target_modules"] == ["q_proj", "v: proj"]
    assert loaded["model"]["name_or_path"] == "yes" and loaded["model"]["revision"] == "0123"


def test_config_show_prints_each_docstring_as_a_comment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "irft"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    beta = lines.index("  beta: 0.1")
    comment = lines[beta - 1]
    assert comment.startswith("  # ") and "implicit reward" in comment and "0.1" in comment
    # Every key's line is directly preceded by a comment line.
    for n, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert lines[n - 1].lstrip().startswith("# "), f"no comment above {line!r}"
    assert yaml.safe_load(out) == load_config("irft").to_dict()
