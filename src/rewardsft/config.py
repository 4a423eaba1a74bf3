"""Typed run configuration: small dataclass sections, YAML files and dotted overrides.

A config is built from (lowest to highest precedence): the dataclass defaults, the method's preset
defaults, a YAML file, then ``KEY=VALUE`` overrides such as ``optim.lr=1e-6``. Unknown keys and wrongly
typed values raise :class:`ConfigError` naming the key (and the closest valid key), so a typo never
silently trains with a default.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rewardsft.data.tokenize import MAX_LENGTH, MAX_PROMPT_LENGTH
from rewardsft.errors import ConfigError
from rewardsft.layout import SFT_PHASE_DIR

METHODS = ("sft", "irft", "rft")


@dataclass
class ModelConfig:
    name_or_path: str = ""
    """Hub id or local directory of the policy (a causal LM)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: float32 on CPU, bfloat16 on GPU (the paper trains in bf16)."""
    trust_remote_code: bool = False
    """Let ``from_pretrained`` run the repository's own modelling code (tokenizer, policy and RFT reward model)."""
    revision: str | None = None
    """Hub branch, tag or commit of ``name_or_path`` for the tokenizer, the initial policy and an RFT reward model
    started from it; None: the default branch."""
    gradient_checkpointing: bool = False
    """Recompute the policy's activations during backward (less memory, more compute); also makes
    ``irft.pair_forward=auto`` choose ``joint``."""
    gguf_file: str | None = None
    """File name inside ``name_or_path`` when the weights are a GGUF file (see OFFLINE.md)."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernel: ``auto`` is transformers' choice (``sdpa`` wherever the architecture supports it, else
    ``eager``); ``sdpa`` is PyTorch's fused attention (flash/memory-efficient kernels on GPU); ``eager`` plain
    matmuls; ``flash_attention_2`` needs the ``flash-attn`` package and a bf16/fp16 model on a GPU."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters instead of all the policy's weights; ``final/`` holds the merged model."""
    r: int = 64
    """Adapter rank (paper's 7B setting: r=64, alpha=16)."""
    alpha: int = 16
    """LoRA scaling: the adapter's update is multiplied by alpha / r (paper: 16)."""
    dropout: float = 0.05
    """Dropout probability on the adapters' input; applies only while ``train.dropout`` is true."""
    target_modules: list[str] | Literal["auto"] = "auto"
    """Module names to adapt; ``auto`` picks the attention and MLP projections of Llama/Mistral/Qwen2/GPT-NeoX/GPT-2
    (for other architectures, every Linear layer except the output head)."""


@dataclass
class DataConfig:
    path: str = ""
    """Hub dataset id, a local .json/.jsonl/.parquet file, or a directory of such files."""
    split: str = "train"
    """Split of ``path`` to train on: a hub or saved-dataset split, or the files of a directory whose name contains
    it (all files when none does); ignored for a single file."""
    eval_path: str | None = None
    """Held-out data, in any form ``path`` accepts; None: ``path`` itself when ``eval_split`` is set, else no
    held-out evaluation."""
    eval_split: str | None = None
    """Split of ``eval_path`` (or of ``path`` when ``eval_path`` is unset); None: ``split`` when ``eval_path`` is
    set, else held-out evaluation is off."""
    format: Literal["auto", "prompt_completion", "messages", "chosen_rejected", "spin"] = "auto"
    """Row format; ``auto`` detects it from the first row's columns (real/generated, chosen/rejected, messages,
    prompt/completion)."""
    max_length: int = MAX_LENGTH
    """Prompt + response tokens (paper: 512)."""
    max_prompt_length: int = MAX_PROMPT_LENGTH
    """Prompt tokens kept, from the end of the prompt (paper: 128)."""
    max_rows: int | None = None
    """Train on the first N rows only (the held-out data is not capped); None: all rows."""
    fallback_template: str = "default"
    """Chat template for tokenizers without one: ``default`` (role-tagged turns) or a Jinja string."""
    system_prompt: str | None = None
    """Prepended as a system turn to message-list prompts that have none."""
    text_prompts: Literal["verbatim", "user_turn"] = "verbatim"
    """Plain-text prompts: ``verbatim`` (as TRL does; right for base models and HH-RLHF dialogues) or
    ``user_turn`` (wrapped as one user message and rendered with the chat template, as a chat model expects)."""


@dataclass
class TrainConfig:
    epochs: int = 1
    """Passes over the training data (IRFT: repeats of the whole T-stage pass); RFT uses ``rft.iterations``."""
    max_steps: int | None = None
    """Optimiser steps; when set, SFT runs exactly this many (ignoring ``epochs``) and IRFT stops after this many
    (shortening or dropping its last stages)."""
    batch_size: int = 8
    """Examples per device per micro-batch; effective batch = batch_size * grad_accum * processes."""
    eval_batch_size: int | None = None
    """Sequences per no-grad forward (held-out loss, IRFT snapshot log-probs, RFT rollout log-probs and reward
    scoring); None: ``batch_size``."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimiser step (SFT and IRFT)."""
    packing: bool = False
    """SFT: pack the examples of each micro-batch into rows of up to ``data.max_length`` tokens, each example
    attending only to itself with its own positions: less padding is computed, and the step (its examples, its
    loss) is unchanged (docs/performance.md). Needs sdpa or eager attention and no sliding window."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient L2 norm to this before each optimiser step; None: no clipping."""
    save_every: int = 500
    """Optimiser steps (RFT: rounds) between checkpoints (a checkpoint is always written at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept; older ones are deleted once a newer one is complete."""
    eval_every: int | None = None
    """Optimiser steps (RFT: rounds) between held-out evaluations (SFT/IRFT: ``eval/loss``; RFT:
    ``eval/rm_accuracy``, also at the start); always at the end. None: at the end only. Needs held-out data."""
    log_every: int = 1
    """Optimiser steps (RFT: rounds) between metric records (metrics.jsonl and trackers); the last step (of each
    IRFT stage) is always logged."""
    dropout: bool = True
    """Keep the model's dropout (and ``lora.dropout``) active in training. IRFT and RFT default to false: with
    dropout the policy at a stage start is not its snapshot and two forwards of one sequence differ (the
    paper's code and TRL switch it off)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A step whose gradient norm is NaN or infinite (a non-finite loss or gradient): ``stop`` the run before the
    optimiser applies it (the last checkpoint stays the last good one; exit 1 with the step named), or ``skip`` the
    step (nothing applied, counted as ``train/nonfinite_skipped``)."""

    @property
    def eval_batch(self) -> int:
        """Sequences per no-grad forward: ``eval_batch_size``, else ``batch_size``."""
        return self.eval_batch_size or self.batch_size


@dataclass
class OptimConfig:
    name: Literal["adamw", "rmsprop"] = "adamw"
    """Optimiser, ``adamw`` or ``rmsprop``; the paper's IRFT runs use RMSprop."""
    lr: float = 2e-5
    """Peak learning rate of the policy (reached after warm-up); the irft preset uses the paper's 5e-7, rft 1e-6."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning rate after warm-up: ``linear`` or ``cosine`` decay to 0 at the last step, or ``constant``."""
    warmup_ratio: float = 0.1
    """Share of the optimiser steps (rounded up) over which the learning rate ramps up linearly (paper: linear
    decay with 10% warm-up)."""
    weight_decay: float = 0.0
    """Weight decay: decoupled in AdamW, an L2 term added to the gradient in RMSprop."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's (beta1, beta2) moment decay rates; RMSprop ignores them."""
    eps: float = 1e-8
    """Term added to the optimiser's denominator for numerical stability (AdamW and RMSprop)."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    """Cap on sampled response tokens (paper's 7B setting: 256); a sample is also cut to fit ``data.max_length``."""
    temperature: float = 1.0
    """Sampling temperature; 1.0 samples from pi_theta as the theory requires (the official code decodes
    greedily)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest token set with this much probability (1.0: off; RFT requires 1.0)."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0: off; RFT requires 0)."""
    do_sample: bool = True
    """Sample (true) or decode greedily (false, ignoring temperature/top_p/top_k); RFT requires true."""
    batch_size: int = 16
    """Prompts per ``generate`` call on each process (longest prompts first, to pad less)."""
    cache: Literal["dynamic", "static"] = "dynamic"
    """KV cache of ``generate``: ``static`` pre-allocates it, and on GPU transformers then compiles the decode step
    (much faster for small models and batches, docs/performance.md; each new batch or length shape compiles
    again); ``dynamic`` grows it and needs no compilation. No effect on the samples' distribution."""
    dtype: Literal["auto", "bfloat16"] = "auto"
    """Weights generation runs with: ``auto`` the policy's own; ``bfloat16`` a bf16 copy of an fp32 policy (CPU: about
    1.4-1.6x faster decoding; the samples then come from the rounded policy: mean next-token KL 7e-4 nats on
    SmolLM2-135M, docs/performance.md). Not with FSDP."""


@dataclass
class LoggingConfig:
    report_to: list[str] = field(default_factory=list)
    """Extra trackers through accelerate: tensorboard, wandb, trackio (metrics.jsonl is always written)."""
    project: str = "rewardsft"
    """Project name passed to the trackers of ``report_to``."""
    progress: bool = True
    """Show a progress bar (main process only)."""


@dataclass
class IRFTConfig:
    stages: int = 5
    """T in Algorithm 2 (paper: T=5 for zephyr-7b); T=1 is SPIN."""
    beta: float = 0.1
    """β, the scale of the implicit reward β·log(π_θ/π_ref) inside ℓ (paper and SPIN: 0.1)."""
    loss: Literal["sigmoid", "hinge", "linear"] = "sigmoid"
    """ℓ(u): sigmoid log(1+e^-u) (SPIN/DPO), hinge max(0, 1-u), linear -u (the theory's form)."""
    sft_weight: float = 0.0
    """Adds this times the demonstrations' token-mean NLL: an anchor against overfitting the snapshot."""
    snapshot: Literal["cached", "copy", "lora"] = "cached"
    """How π_ref = θ_t is held: cached log-probs (SFT memory), a frozen copy, or the LoRA base."""
    pair_forward: Literal["auto", "split", "joint", "shared"] = "auto"
    """``split``: demonstrations and generations backpropagate one after the other (one half's activations at a
    time, one extra no-grad forward); ``joint``: one forward of both (same gradient); ``shared``: one row per pair,
    prompt then demonstration then generation, the prompt computed once for both (same gradient; sdpa or eager
    attention, no sliding window); ``auto``: joint with gradient checkpointing (activations are small, joint is
    faster and leaner); without it, shared on CPU where the model takes the mask (faster than split at the same
    peak memory), else split (docs/performance.md)."""
    epochs_per_stage: int = 1
    """Passes over the stage's chunk; the paper's K (optimiser steps per stage) is this times the chunk's steps
    per pass (ceil(chunk / global batch)). The paper's pythia-1.4b runs used 2 epochs per stage."""
    reset_optimizer_each_stage: bool = False
    """True reproduces the official code, which restarts optimiser and LR schedule every stage."""


@dataclass
class SFTPhaseConfig:
    epochs: int = 0
    """IRFT and RFT: passes of SFT over the same demonstrations before reward learning, in ``OUTPUT_DIR/sft``; the
    reward-learning phase then starts from that model (the paper's protocol, SFT then IRFT, as one resumable run).
    It shares the run's model, LoRA, data, batch, clipping and checkpoint settings and its lr schedule, and trains
    with AdamW; 0: no SFT phase."""
    lr: float = 2e-5
    """Peak learning rate of the SFT phase (the run's ``optim.lr`` is the reward-learning phase's)."""


@dataclass
class RFTConfig:
    iterations: int = 20
    """Outer rounds of Algorithm 1: generate, reward step(s), policy step(s)."""
    prompts_per_iteration: int = 64
    """Demonstration prompts per round (cycling through a seeded shuffle of the data)."""
    samples_per_prompt: int = 4
    """k responses per prompt; RLOO's leave-one-out baseline needs k >= 2."""
    reward_steps: int = 1
    """Reward-model optimiser steps per round, each over all (demonstration, generation) pairs of the round."""
    policy_steps: int = 1
    """Policy optimiser steps per round, each over the whole rollout (clipped ratio after the first)."""
    kl_coef: float = 0.05
    """Coefficient of the per-token KL penalty to the initial policy, summed over the response."""
    reward_norm: Literal["none", "whiten"] = "whiten"
    """``whiten``: standardise the KL-penalised rewards over the rollout (zero mean, unit std) before
    RLOO; ``none``: use them as they are."""
    reward_clip: float | None = None
    """Clip the rewards (after ``reward_norm``) to ±this before RLOO; None: no clipping."""
    clip_ratio: float = 0.2
    """ε of the PPO-style clip of π_θ/π_old to [1-ε, 1+ε]; has no effect on a rollout's first policy step."""
    preference_path: str | None = None
    """Optional real preference pairs (chosen/rejected) mixed into the reward step."""
    preference_split: str = "train"
    """Split of ``preference_path``, as ``data.split`` is of ``data.path``."""
    preference_weight: float = 0.0
    """Weight of the preference pairs' BT loss (the official script uses 0)."""


@dataclass
class RewardModelConfig:
    name_or_path: str | None = None
    """None: start from the policy's initial weights with a fresh scalar head."""
    lora: bool = False
    """Train the reward model with LoRA (the ``lora`` section's settings; the head is fully trained)."""
    lr: float = 1e-5
    """Learning rate of the reward model; every other ``optim`` setting (optimiser, schedule, warm-up, weight decay)
    is shared with the policy."""


@dataclass
class RunConfig:
    method: Literal["sft", "irft", "rft"] = "sft"
    """Set by the command (``rewardsft train METHOD``); a config file's ``method`` must match it."""
    output_dir: str = "runs/sft"
    """Run folder (config.yaml, metrics.jsonl, checkpoints/, final/); the preset is runs/METHOD."""
    seed: int = 42
    """Seeds the RNGs, the data shuffles and the sampling (each stage, round and process derives its own)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in ``output_dir``."""
    overwrite: bool = False
    """Delete an existing non-empty ``output_dir`` first."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy: its weights and how they are loaded."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters for the policy (and for the RFT reward model with ``reward_model.lora``)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Demonstrations, held-out data and how they are rendered and truncated."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Batching, run length, evaluation, logging and checkpoint cadence."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule (shared by the RFT reward model, except its ``lr``)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Sampling of responses from the policy (IRFT stages, RFT rounds)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Progress bar and experiment trackers."""
    sft_phase: SFTPhaseConfig = field(default_factory=SFTPhaseConfig)
    """An SFT phase before IRFT or RFT in the same run (``sft_phase.epochs`` > 0); read by those two only."""
    irft: IRFTConfig = field(default_factory=IRFTConfig)
    """IRFT (the paper's Algorithm 2); read by ``rewardsft train irft`` only."""
    rft: RFTConfig = field(default_factory=RFTConfig)
    """RFT (the paper's Algorithm 1); read by ``rewardsft train rft`` only."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """RFT's explicit reward model r_φ."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Per-method defaults that differ from the dataclass defaults, each from the paper.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"output_dir": "runs/sft"},
    # Official IRFT setting (PAPER.md, Algorithm 2): RMSprop, lr 5e-7, linear with 10% warm-up.
    # Dropout off for both reward-learning recipes, as in the paper's code and TRL (TrainConfig.dropout).
    "irft": {"output_dir": "runs/irft", "optim": {"name": "rmsprop", "lr": 5e-7}, "train": {"dropout": False}},
    "rft": {"output_dir": "runs/rft", "optim": {"lr": 1e-6}, "train": {"dropout": False}},
}

# Settings a method never reads, each with what does that job for the method. Setting one (to anything but
# its default) is an error: a recipe never ignores a setting silently.
UNUSED_BY_METHOD: dict[str, dict[str, str]] = {
    "sft": {
        "generation": "SFT does not generate",
        "irft": "the irft section is read by `rewardsft train irft` only",
        "rft": "the rft section is read by `rewardsft train rft` only",
        "reward_model": "SFT trains no reward model (`rewardsft train rft` does)",
        "sft_phase": "sft_phase is an SFT run inside `rewardsft train irft` or `rft`; here the whole run is SFT",
    },
    "irft": {
        "rft": "the rft section is read by `rewardsft train rft` only",
        "reward_model": "IRFT's reward is implicit, β·log(π_θ/π_ref) (irft.beta); `rewardsft train rft` trains one",
        "train.packing": "IRFT's rows are pairs; irft.pair_forward=shared computes each pair's prompt once",
    },
    "rft": {
        "irft": "the irft section is read by `rewardsft train irft` only",
        "train.packing": "packing is SFT's; RFT's rollouts are not packed",
        "train.epochs": "RFT runs rft.iterations rounds of rft.prompts_per_iteration prompts; set rft.iterations",
        "train.max_steps": "RFT runs rft.iterations rounds; set rft.iterations",
        "train.grad_accum": (
            "one RFT optimiser step covers a whole round (rft.prompts_per_iteration x rft.samples_per_prompt "
            "sequences, micro-batched by train.batch_size); set those instead"
        ),
    },
}


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


def load_config(
    method: str, config: str | os.PathLike[str] | None = None, overrides: Overrides | None = None, **settings: Any
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
        merged = deep_merge(merged, _read_yaml(Path(config)))
    if isinstance(overrides, Mapping):
        merged = deep_merge(merged, nest_values(overrides))
    else:
        merged = deep_merge(merged, parse_overrides(list(overrides or [])))
    merged = deep_merge(merged, nest_values(settings))
    file_method = merged.pop("method", method)
    if file_method != method:
        raise ConfigError(f"config says method: {file_method!r} but the command trains {method!r}")
    resolved = _build(RunConfig, merged, prefix="")
    resolved.method = method  # type: ignore[assignment]
    validate(resolved)
    reject_unused(resolved)
    if resolved.method != "sft" and resolved.sft_phase.epochs > 0:
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


def sft_phase_config(config: RunConfig, resume: bool = False) -> RunConfig:
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
        "output_dir": str(Path(config.output_dir) / SFT_PHASE_DIR),
        "seed": config.seed,
        "resume": resume,
        "overwrite": config.overwrite,
    }
    return load_config("sft", overrides=values)


def method_defaults(method: str) -> RunConfig:
    """The config ``method`` gets with no file and no overrides."""
    config: RunConfig = _build(RunConfig, dict(METHOD_DEFAULTS[method]), prefix="")
    config.method = method  # type: ignore[assignment]
    return config


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A config from a resolved mapping (e.g. a run's ``config.yaml``), type-checked but not re-validated."""
    config: RunConfig = _build(RunConfig, values, prefix="")
    return config


@functools.cache
def field_docs() -> dict[str, dict[str, str]]:
    """Field docstrings of this module's dataclasses, ``{class name: {field: docstring}}``, from its source.

    A string literal right after an annotated field documents it; Python keeps no such docstrings at runtime, so
    they are parsed (once) with :mod:`ast`. Empty when the source is unavailable. Treat the result as read-only.
    """
    try:
        source = inspect.getsource(sys.modules[__name__])
    except (OSError, TypeError):
        return {}
    docs: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, str] = {}
        for stmt, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                fields[stmt.target.id] = inspect.cleandoc(after.value.value)
        docs[node.name] = fields
    return docs


COMMENT_WIDTH = 110
"""Comment lines of ``to_commented_yaml`` are wrapped to about this many characters."""


def _comment(doc: str, width: int) -> list[str]:
    """The docstring's first sentence, whitespace collapsed and ``code`` marks made single backticks, wrapped to
    lines of about ``width`` characters."""
    text = " ".join(doc.split()).replace("``", "`")
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z`])", text, maxsplit=1)[0]
    return textwrap.wrap(sentence, max(width, 40), break_long_words=False, break_on_hyphens=False)


def to_commented_yaml(config: RunConfig) -> str:
    """The mapping of ``config.to_yaml()`` with each key's docstring (first sentence) as a comment above it.

    ``yaml.safe_load`` of the result is exactly ``config.to_dict()``; ``rewardsft config show`` prints it.
    """
    lines: list[str] = []
    _commented_section(RunConfig, config.to_dict(), 0, lines)
    return "\n".join(lines) + "\n"


def _commented_section(cls: type, values: dict[str, Any], depth: int, lines: list[str]) -> None:
    docs = field_docs().get(cls.__name__, {})
    hints = typing.get_type_hints(cls)
    indent = "  " * depth
    for f in dataclasses.fields(cls):
        value, hint = values[f.name], hints[f.name]
        section = dataclasses.is_dataclass(hint)
        if section and lines:
            lines.append("")  # a blank line before each section
        lines.extend(f"{indent}# {line}" for line in _comment(docs.get(f.name, ""), COMMENT_WIDTH - len(indent) - 2))
        if section:
            lines.append(f"{indent}{f.name}:")
            _commented_section(hint, value, depth + 1, lines)
            continue
        # Dumping the one-key mapping quotes strings as needed (':', '#', 'yes', ...) and writes null for None;
        # lists go in flow style ([a, b]); the huge width stops long strings being folded.
        dumped = yaml.safe_dump(
            {f.name: value},
            sort_keys=False,
            default_flow_style=None if isinstance(value, list) else False,
            allow_unicode=True,
            width=1 << 30,
        )
        lines.extend(f"{indent}{line}" for line in dumped.splitlines())


def reject_unused(config: RunConfig) -> None:
    """Refuse settings this method (or this combination of settings) would not read."""
    defaults = method_defaults(config.method)
    unused = dict(UNUSED_BY_METHOD[config.method])
    if not config.train.dropout:
        unused["lora.dropout"] = "dropout is off (train.dropout=false); set train.dropout=true to keep it"
    if not (config.lora.enabled or (config.method == "rft" and config.reward_model.lora)):
        for name in ("r", "alpha", "dropout", "target_modules"):
            unused.setdefault(f"lora.{name}", "LoRA is off; set lora.enabled=true to use it")
    no_eval = config.data.eval_path is None and config.data.eval_split is None
    if no_eval:
        unused["train.eval_every"] = "there is no held-out data; set data.eval_path or data.eval_split"
        if config.method == "sft":
            unused["train.eval_batch_size"] = (
                "SFT uses it for held-out data only; set data.eval_path or data.eval_split"
            )
    if config.optim.name == "rmsprop":
        unused["optim.betas"] = "RMSprop has no betas (optim.name=adamw uses them)"
    if not config.generation.do_sample:
        for name in ("temperature", "top_p", "top_k"):
            unused[f"generation.{name}"] = "generation.do_sample=false decodes greedily"
    if config.sft_phase.epochs == 0:
        unused["sft_phase.lr"] = "sft_phase.epochs is 0, so there is no SFT phase; set it above 0"
    if config.rft.preference_weight == 0:
        why = "rft.preference_weight is 0, so no preference pairs are mixed in; set it above 0"
        unused |= {"rft.preference_path": why, "rft.preference_split": why}
    values, default_values = flatten(config.to_dict()), flatten(defaults.to_dict())
    for dotted, value in values.items():
        rule = next((key for key in (dotted, dotted.split(".")[0]) if key in unused), None)
        if rule is not None and value != default_values[dotted]:
            raise ConfigError(f"config key {dotted!r} is not used by `rewardsft train {config.method}`: {unused[rule]}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _read_yaml(path: Path) -> dict[str, Any]:
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
        (config.irft.stages > 0, "irft.stages must be positive"),
        (config.sft_phase.epochs >= 0, "sft_phase.epochs must be >= 0 (0: no SFT phase)"),
        (config.sft_phase.lr > 0, "sft_phase.lr must be positive"),
        (config.irft.beta > 0, "irft.beta must be positive"),
        (config.irft.epochs_per_stage > 0, "irft.epochs_per_stage must be positive"),
        (config.rft.iterations > 0, "rft.iterations must be positive"),
        (config.rft.prompts_per_iteration > 0, "rft.prompts_per_iteration must be positive"),
        (config.rft.samples_per_prompt >= 2, "rft.samples_per_prompt must be at least 2 (RLOO's baseline)"),
        (config.rft.reward_steps >= 0 and config.rft.policy_steps >= 0, "rft step counts must be >= 0"),
        (not (config.resume and config.overwrite), "resume=true and overwrite=true contradict each other"),
        (
            not (config.method == "irft" and config.irft.snapshot == "lora" and not config.lora.enabled),
            "irft.snapshot=lora needs lora.enabled=true",
        ),
        (config.method != "rft" or _samples_from_policy(config.generation), RFT_SAMPLING_MESSAGE),
        (
            config.rft.preference_weight == 0 or config.rft.preference_path is not None,
            "rft.preference_weight > 0 needs rft.preference_path (chosen/rejected pairs)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
