"""Building a config: YAML files and dotted overrides layered over a method's defaults, each value checked against
its field's type, then the cross-field checks and the refusal of settings the method would not read."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from rewardsft.config.schema import (
    CONFIG_TYPES,
    METHOD_DEFAULTS,
    METHODS,
    SECTION_OWNERS,
    SFT_PHASE_FOLDER,
    UNUSED_BY_METHOD,
    GenerationConfig,
    IRFTConfig,
    RewardLearningConfig,
    RFTConfig,
    RunConfig,
    SFTConfig,
    foreign_section_reason,
)
from rewardsft.errors import ConfigError


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=1e-6", "lora.enabled=true"]`` into a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not KEY=VALUE (e.g. optim.lr=1e-6)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {pair!r}: value is not valid YAML ({err})") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


Overrides = Sequence[str] | Mapping[str, Any]
"""``["optim.lr=1e-6"]`` (values parsed as YAML, as on the command line) or ``{"optim.lr": 1e-6}`` /
``{"optim": {"lr": 1e-6}}`` (Python values; dotted keys and nested mappings may be mixed)."""


def nest_values(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 1e-6, "lora": {"r": 8}}`` -> nested dicts; paths become strings."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override key {prefix}{key!r} is not a dotted setting name (e.g. 'optim.lr')")
        if isinstance(value, Mapping):
            value = nest_values(value, f"{prefix}{key}.")
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        *parents, leaf = key.split(".")
        update: dict[str, Any] = {leaf: value}
        for part in reversed(parents):
            update = {part: update}
        nested = deep_merge(nested, update)
    return nested


ConfigFile = str | os.PathLike[str] | None


@typing.overload
def load_config(
    method: Literal["sft"], config: ConfigFile = None, overrides: Overrides | None = None, **settings: Any
) -> SFTConfig: ...
@typing.overload
def load_config(
    method: Literal["irft"], config: ConfigFile = None, overrides: Overrides | None = None, **settings: Any
) -> IRFTConfig: ...
@typing.overload
def load_config(
    method: Literal["rft"], config: ConfigFile = None, overrides: Overrides | None = None, **settings: Any
) -> RFTConfig: ...
@typing.overload
def load_config(
    method: str, config: ConfigFile = None, overrides: Overrides | None = None, **settings: Any
) -> RunConfig: ...


def load_config(
    method: str, config: ConfigFile = None, overrides: Overrides | None = None, **settings: Any
) -> RunConfig:
    """The full, validated settings of a run, as ``rewardsft config show`` prints them (the CLI and the Python
    API's one loader).

    Layers, later wins: the method's defaults, the YAML file ``config``, ``overrides`` (``{"optim.lr": 1e-6}``,
    nested mappings, or the CLI's ``["optim.lr=1e-6"]``), then ``settings`` (``output_dir="runs/x"``,
    ``optim={"lr": 1e-6}``). Unknown keys, wrong types and settings the method does not read raise ConfigError.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of KEY=VALUE strings or a mapping, not the string {overrides!r}")
    merged: dict[str, Any] = dict(METHOD_DEFAULTS[method])
    if config is not None:
        merged = deep_merge(merged, read_yaml(Path(config)))
    if isinstance(overrides, Mapping):
        merged = deep_merge(merged, nest_values(overrides))
    else:
        merged = deep_merge(merged, parse_overrides(list(overrides or [])))
    merged = deep_merge(merged, nest_values(settings))
    file_method = merged.pop("method", method)
    if file_method != method:
        raise ConfigError(f"config says method: {file_method!r} but the command trains {method!r}")
    resolved: RunConfig = _build(CONFIG_TYPES[method], without_foreign_defaults(method, merged), prefix="")
    validate(resolved)
    reject_unused(resolved)
    if isinstance(resolved, RewardLearningConfig) and resolved.sft_phase.epochs > 0:
        sft_phase_config(resolved)  # its SFT phase is checked now, not after the run has started
    return resolved


SFT_PHASE_TRAIN = (
    "batch_size",
    "grad_accum",
    "max_grad_norm",
    "save_every",
    "keep_checkpoints",
    "eval_every",
    "log_every",
    "on_nonfinite",
)
"""The run's ``train`` settings its SFT phase shares (and ``eval_batch_size`` where there is held-out data, the
only place SFT reads it); its length is ``sft_phase.epochs`` and its dropout SFT's default (the reward recipes
switch dropout off for reasons SFT does not have)."""
SFT_PHASE_OPTIM = ("schedule", "warmup_ratio", "weight_decay", "eps")
"""The run's ``optim`` settings its SFT phase shares (``betas`` too when the run is AdamW's); the phase trains with
AdamW, SFT's optimiser, at ``sft_phase.lr``."""


def sft_phase_config(config: RewardLearningConfig, resume: bool = False) -> RunConfig:
    """The SFT phase of an IRFT or RFT run: what ``rewardsft train sft`` would run on the same model, data and
    batches, into ``OUTPUT_DIR/sft`` (:mod:`rewardsft.recipes.phases`)."""
    sections = ("model", "lora", "data", "logging")
    values: dict[str, Any] = {name: dataclasses.asdict(getattr(config, name)) for name in sections}
    train = {key: getattr(config.train, key) for key in SFT_PHASE_TRAIN}
    if config.data.eval_path is not None or config.data.eval_split is not None:
        train["eval_batch_size"] = config.train.eval_batch_size
    values["train"] = train | {"epochs": config.sft_phase.epochs}
    optim = {key: getattr(config.optim, key) for key in SFT_PHASE_OPTIM}
    if config.optim.name == "adamw":
        optim["betas"] = config.optim.betas
    values["optim"] = optim | {"name": "adamw", "lr": config.sft_phase.lr}
    values |= {
        "output_dir": str(Path(config.output_dir) / SFT_PHASE_FOLDER),
        "seed": config.seed,
        "resume": resume,
        "overwrite": config.overwrite,
    }
    return load_config("sft", overrides=values)


IGNORED_ON_RESUME = ("resume", "overwrite", "logging")
"""Sections and keys a run may change when it continues (or is reused): how it starts and what it shows."""


def changed_settings(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two flattened configs (a key one of them lacks counts), but
    :data:`IGNORED_ON_RESUME`; sorted."""
    keys = sorted(set(before) | set(now))
    return [k for k in keys if k.split(".")[0] not in IGNORED_ON_RESUME and before.get(k) != now.get(k)]


def method_defaults(method: str) -> RunConfig:
    """The config ``method`` gets with no file and no overrides."""
    config: RunConfig = _build(CONFIG_TYPES[method], dict(METHOD_DEFAULTS[method]), prefix="")
    return config


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A config from a resolved mapping (e.g. a run's ``config.yaml``), type-checked but not re-validated."""
    method = values.get("method", "sft")
    if method not in CONFIG_TYPES:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    config: RunConfig = _build(CONFIG_TYPES[method], without_foreign_defaults(method, values), prefix="")
    return config


def without_foreign_defaults(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` less the sections of other methods, which may only hold their defaults: a run folder or a
    ``config show`` dump written before each method had its own type carries every section (some lacking keys
    added since). A key set to anything else there is refused, naming it and what does its job."""
    kept = dict(values)
    for section in [key for key in values if foreign_section_reason(method, key) is not None]:
        owner = CONFIG_TYPES[SECTION_OWNERS[section][0]]
        default = flatten({section: dataclasses.asdict(typing.get_type_hints(owner)[section]())})
        given = flatten({section: values[section]}) if isinstance(values[section], dict) else {section: values[section]}
        off = next((k for k, v in given.items() if k not in default or _plain(v) != _plain(default[k])), None)
        if off is not None:
            raise ConfigError(
                f"config key {off!r} is not used by `rewardsft train {method}`: {foreign_section_reason(method, section)}"
            )
        del kept[section]
    return kept


def _plain(value: Any) -> Any:
    """A value as YAML reads it back (tuples as lists), so a default compares equal to its dump."""
    return yaml.safe_load(yaml.safe_dump(value))


def reject_unused(config: RunConfig) -> None:
    """Refuse settings this method (or this combination of settings) would not read."""
    defaults = method_defaults(config.method)
    unused = dict(UNUSED_BY_METHOD[config.method])
    if not config.train.dropout:
        unused["lora.dropout"] = "dropout is off (train.dropout=false); set train.dropout=true to keep it"
    if not (config.lora.enabled or (isinstance(config, RFTConfig) and config.reward_model.lora)):
        for name in ("r", "alpha", "dropout", "target_modules"):
            unused.setdefault(f"lora.{name}", "LoRA is off; set lora.enabled=true to use it")
    if config.data.eval_path is None and config.data.eval_split is None:
        unused["train.eval_every"] = "there is no held-out data; set data.eval_path or data.eval_split"
        if config.method == "sft":
            unused["train.eval_batch_size"] = (
                "SFT uses it for held-out data only; set data.eval_path or data.eval_split"
            )
    if isinstance(config, IRFTConfig) and config.irft.pair_forward != "shared":
        unused["train.packing"] = "IRFT packs its shared pair rows only: set irft.pair_forward=shared as well"
    if config.optim.name == "rmsprop":
        unused["optim.betas"] = "RMSprop has no betas (optim.name=adamw uses them)"
    if isinstance(config, RewardLearningConfig):
        unused |= _unused_by_reward_learning(config)
    values, default_values = flatten(config.to_dict()), flatten(defaults.to_dict())
    for dotted, value in values.items():
        rule = next((key for key in (dotted, dotted.split(".")[0]) if key in unused), None)
        if rule is not None and value != default_values[dotted]:
            raise ConfigError(f"config key {dotted!r} is not used by `rewardsft train {config.method}`: {unused[rule]}")


def _unused_by_reward_learning(config: RewardLearningConfig) -> dict[str, str]:
    unused: dict[str, str] = {}
    if not config.generation.do_sample:
        for name in ("temperature", "top_p", "top_k"):
            unused[f"generation.{name}"] = "generation.do_sample=false decodes greedily"
    if config.sft_phase.epochs == 0:
        unused["sft_phase.lr"] = "sft_phase.epochs is 0, so there is no SFT phase; set it above 0"
    if isinstance(config, RFTConfig) and config.rft.preference_weight == 0:
        why = "rft.preference_weight is 0, so no preference pairs are mixed in; set it above 0"
        unused |= {"rft.preference_path": why, "rft.preference_split": why}
    return unused


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(f"config file {path}: line {line}: not valid UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return loaded


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown_key_message(dotted, prefix, list(fields)))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} must be a mapping of settings, got {value!r}")
            kwargs[key] = _build(hint, value, prefix=f"{dotted}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(value, hint, dotted)
    return cls(**kwargs)


def _unknown_key_message(dotted: str, prefix: str, valid: list[str]) -> str:
    candidates = [f"{prefix}{name}" for name in valid]
    close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(candidates)}"
    return f"unknown config key {dotted!r}{hint}"


def _coerce(value: Any, hint: Any, dotted: str) -> Any:
    """Check ``value`` against the annotation ``hint``; ints are accepted for floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, dotted)
            except ConfigError:
                continue
        raise ConfigError(f"config key {dotted!r}: {value!r} does not fit {_type_name(hint)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {dotted!r}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {dotted!r} must be a list, got {value!r}")
        return [_coerce(item, args[0], dotted) for item in value]
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"config key {dotted!r} must be null")
        return None
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "3e-3" (no dot) as a string; users mean a number.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"config key {dotted!r} must be {_type_name(hint)}, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


RFT_SAMPLING_MESSAGE = (
    "RFT samples from the policy itself: its policy gradient and KL use π_θ's own log-probs, so sampling must "
    "be plain (generation.do_sample=true, temperature=1, top_p=1, top_k=0); other settings would make RLOO "
    "silently off-policy"
)


def _samples_from_policy(gen: GenerationConfig) -> bool:
    return gen.do_sample and gen.temperature == 1.0 and gen.top_p == 1.0 and gen.top_k == 0


def validate(config: RunConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    checks = [
        (
            config.data.max_prompt_length < config.data.max_length,
            "data.max_prompt_length must be < data.max_length",
        ),
        (config.data.max_prompt_length > 0, "data.max_prompt_length must be positive"),
        (config.train.batch_size > 0, "train.batch_size must be positive"),
        (config.train.grad_accum > 0, "train.grad_accum must be positive"),
        (config.train.epochs > 0, "train.epochs must be positive"),
        (config.train.max_steps is None or config.train.max_steps > 0, "train.max_steps must be positive"),
        (config.train.save_every > 0, "train.save_every must be positive"),
        (config.train.keep_checkpoints > 0, "train.keep_checkpoints must be positive"),
        (config.optim.lr > 0, "optim.lr must be positive"),
        (0.0 <= config.optim.warmup_ratio < 1.0, "optim.warmup_ratio must be in [0, 1)"),
        (len(config.optim.betas) == 2, "optim.betas must have two values"),
        (config.lora.r > 0, "lora.r must be positive"),
        (not (config.resume and config.overwrite), "resume=true and overwrite=true contradict each other"),
    ]
    if isinstance(config, RewardLearningConfig):
        checks += [
            (config.sft_phase.epochs >= 0, "sft_phase.epochs must be >= 0 (0: no SFT phase)"),
            (config.sft_phase.lr > 0, "sft_phase.lr must be positive"),
        ]
    if isinstance(config, IRFTConfig):
        checks += [
            (config.irft.stages > 0, "irft.stages must be positive"),
            (config.irft.beta > 0, "irft.beta must be positive"),
            (config.irft.epochs_per_stage > 0, "irft.epochs_per_stage must be positive"),
            (config.irft.snapshot != "lora" or config.lora.enabled, "irft.snapshot=lora needs lora.enabled=true"),
        ]
    if isinstance(config, RFTConfig):
        checks += [
            (config.rft.iterations > 0, "rft.iterations must be positive"),
            (config.rft.prompts_per_iteration > 0, "rft.prompts_per_iteration must be positive"),
            (config.rft.samples_per_prompt >= 2, "rft.samples_per_prompt must be at least 2 (RLOO's baseline)"),
            (config.rft.reward_steps >= 0 and config.rft.policy_steps >= 0, "rft step counts must be >= 0"),
            (_samples_from_policy(config.generation), RFT_SAMPLING_MESSAGE),
            (
                config.rft.preference_weight == 0 or config.rft.preference_path is not None,
                "rft.preference_weight > 0 needs rft.preference_path (chosen/rejected pairs)",
            ),
        ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
