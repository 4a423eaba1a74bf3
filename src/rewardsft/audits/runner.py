"""Score every demonstration out of fold: learn a reward on k-1 folds, score the held-out fold, k times.

Explicit reward: an RFT run with no policy step (``rft.policy_steps=0``): its Bradley-Terry reward model learns the
demonstrations over the start model's own samples, which is RFT's reward step alone. Implicit reward: a SPIN run
(IRFT, one stage); its reward of a response is β·log(π_θ/π_start). Either way a row's score is the reward of its
response, standardised within its fold (each fold has its own reward, with its own scale); with
``--against-samples N``, the reward of the response minus the mean reward of N samples of the start model for the
row's prompt, under the same fold's reward (a per-prompt baseline: a prompt whose every answer the reward likes
does not lift its row). Every run trains through :func:`rewardsft.recipes.run_recipe`, as ``rewardsft train``
does; a finished fold is never redone, so rerunning the command continues an audit.

Layout of ``OUT``::

    audit.json        the settings and what was found
    folds/F/          train.jsonl (the other folds), run/ (the fold's reward), rewards.json (and, with
                      --against-samples, the held-out prompts' samples and their rewards)
    baseline.json     the start model's log-likelihood of every row (the baseline a user would try first)
    scores.jsonl, flagged.jsonl, clean.jsonl, rejected.jsonl, report.md, report.html
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewardsft.audits.folds import assign_folds, flag, percentiles, standardise_within
from rewardsft.config import GenerationConfig, ModelConfig, RunConfig, load_config, parse_overrides
from rewardsft.data import DataError, Example, load_rows
from rewardsft.data.formats import parse_each_row
from rewardsft.data.tokenize import RenderSettings
from rewardsft.errors import ConfigError
from rewardsft.layout import (
    CHECKPOINTS,
    FINAL,
    REWARD_MODEL,
    Rendering,
    render_settings,
    run_config,
    run_of,
    run_render_settings,
)
from rewardsft.studies.split import fingerprint, write_rows

Reward = Literal["explicit", "implicit"]
DEFAULT_SHARE = 0.1
"""Flagged share when neither a share nor a score is given (docs/audit.md has the evidence behind it)."""
AUDIT_FILE = "audit.json"
AUDIT_OWNED = {
    "model.name_or_path": "--model",
    "data.path": "--data",
    "data.split": "--split",
    "data.format": "--format",
    "output_dir": "--out",
    "seed": "--seed",
    "resume": "rerunning the command (it continues)",
    "overwrite": "--overwrite",
    "train.epochs": "--passes",
    "rft.iterations": "--passes (one round per batch of prompts)",
    "rft.policy_steps": "the explicit reward is RFT's reward step alone (no policy step)",
    "rft.prompts_per_iteration": "train.batch_size (one round takes a batch of prompts)",
    "irft.stages": "the implicit reward is SPIN's (one stage)",
    "irft.epochs_per_stage": "--passes (the stage's passes over the other folds)",
    "sft_phase": "--model (start the audit from an SFT run folder instead)",
    "logging.progress": "the audit prints its own progress per fold",
    "data.max_rows": "the audit scores every row (cut the file instead)",
}
UNUSED_BY_REWARD = {
    "explicit": {
        "optim.lr": "the explicit reward takes no policy step; its reward model's lr is reward_model.lr",
        "rft.kl_coef": "the explicit reward takes no policy step",
        "rft.reward_norm": "the explicit reward takes no policy step",
        "rft.reward_clip": "the explicit reward takes no policy step",
        "rft.clip_ratio": "the explicit reward takes no policy step",
        "rft.policy_steps": "the explicit reward takes no policy step",
        "lora.enabled": "the policy is not trained; reward_model.lora=true trains the reward model with LoRA",
    },
    "implicit": {},
}
"""Settings the fold's recipe would accept but the audit's use of it never reads (a setting not read is an error)."""
METHOD = {"explicit": "rft", "implicit": "irft"}


@dataclass(frozen=True)
class AuditSettings:
    """Everything ``rewardsft audit`` takes (``rewardsft audit --help``, docs/audit.md)."""

    model: str
    data: str
    out: Path
    reward: Reward = "implicit"
    """``implicit`` (SPIN's β·log π/π_start: better in the measurements, docs/audit.md) or ``explicit`` (RFT's)."""
    folds: int = 5
    share: float | None = None
    """Flag this share of the rows, lowest scores first (default :data:`DEFAULT_SHARE` when ``below`` is None)."""
    below: float | None = None
    """Flag the rows whose score (a z-score within the fold) is below this."""
    passes: int = 2
    """Passes over the k-1 training folds for each fold's reward."""
    seed: int = 0
    fmt: str = "auto"
    split: str = "train"
    overrides: tuple[str, ...] = ()
    """``KEY=VALUE`` settings for every fold's run (RFT's for ``explicit``, IRFT's for ``implicit``)."""
    against_samples: int = 0
    """Subtract the mean reward of this many start-model samples per prompt from the row's (0: the row's reward
    alone)."""
    keep_models: bool = False
    """Keep each fold's trained reward (``folds/F/run``); default: removed once its fold is scored."""
    overwrite: bool = False


@dataclass
class Rows:
    """The rows that parsed (with their 1-based row number as the loader counts rows, as in its error messages:
    for JSONL without blank lines, the file line), the raw rows (for ``clean.jsonl``) and the rejected ones."""

    source: str
    lines: list[int]
    examples: list[Example]
    raw: list[Any]
    rejected: list[tuple[int, str]] = field(default_factory=list)


def run_audit(settings: AuditSettings) -> Path:
    """Run (or continue) the audit; returns ``OUT/report.md``."""
    from rewardsft.audits.report import write_outputs

    check_settings(settings)
    typed, settings = settings, with_absolute_paths(settings)
    rows = read_rows(settings)
    keys = [row_key(ex) for ex in rows.examples]
    try:
        fold_of = assign_folds(keys, settings.folds, settings.seed)
    except ValueError as err:
        raise DataError(f"{rows.source}: {err}") from None
    template = fold_config(settings, settings.out / "folds" / "0", "unused", 1)
    start, rendering = start_model(settings, template)
    # Everything the finished folds' numbers depend on: a rerun on changed rows or settings must not reuse them.
    render = asdict(rendering.settings)
    stamp = fingerprint(keys, fold_of, start, render)
    # an audit written before paths were made absolute holds the start model as it was typed
    legacy = fingerprint(keys, fold_of, start_model(typed, template)[0], render)
    check_samples(settings, template)
    out = prepare_out(settings, stamp, legacy)  # after every input check: --overwrite never clears for a failed start
    began = time.time()
    say(
        f"audit of {rows.source}: {len(rows.examples)} rows ({len(rows.rejected)} rejected), {settings.folds} folds, "
        f"{settings.reward} reward from {start}"
    )
    rewards, against = [math.nan] * len(rows.examples), [0.0] * len(rows.examples)
    for fold in range(settings.folds):
        held = [i for i, f in enumerate(fold_of) if f == fold]
        train = [rows.examples[i] for i, f in enumerate(fold_of) if f != fold]
        scored_fold = fold_rewards(settings, out, fold, start, template, train, [rows.examples[i] for i in held])
        for i, reward, sampled in zip(held, *scored_fold, strict=True):
            rewards[i], against[i] = reward, sampled
        say(f"  fold {fold + 1}/{settings.folds} scored ({time.time() - began:.0f}s)")
    baseline = baseline_loglik(out, rows.examples, start_config(template, start), rendering.settings)
    # a row none of whose samples could be scored (nan, written as null) keeps its reward alone
    scores = standardise_within(
        [r - (a if math.isfinite(a) else 0.0) for r, a in zip(rewards, against, strict=True)], fold_of
    )
    share = settings.share if settings.share is not None or settings.below is not None else DEFAULT_SHARE
    flagged = flag(scores, share, settings.below)
    record = {
        "settings": portable(settings),
        "start_model": start,
        "rows": len(rows.examples),
        "rejected": len(rows.rejected),
        "flagged": sum(flagged),
        "share": share,
        "below": settings.below,
        "fold_sizes": [fold_of.count(f) for f in range(settings.folds)],
        "minutes": (time.time() - began) / 60,
    }
    scored: dict[str, list[Any]] = {
        "reward": rewards,
        **({"sample_reward": against} if settings.against_samples else {}),
        "score": scores,
        "percentile": percentiles(scores),
        "fold": fold_of,
        "flagged": flagged,
        "baseline_logp_per_token": baseline,
    }
    report = write_outputs(out, rows, scored, record)
    (out / AUDIT_FILE).write_text(json.dumps(record, indent=2))
    say(f"audit done: {sum(flagged)} of {len(rows.examples)} rows flagged; {report}")
    return report


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- settings and input


def check_settings(settings: AuditSettings) -> None:
    if settings.reward not in METHOD:
        raise ConfigError(f"--reward {settings.reward!r}: choose explicit (RFT's reward model) or implicit (SPIN's)")
    if settings.passes < 1:
        raise ConfigError("--passes must be at least 1")
    if settings.against_samples < 0:
        raise ConfigError(f"--against-samples {settings.against_samples}: a number of samples, 0 for none")
    if settings.share is not None and settings.below is not None:
        raise ConfigError("--flag-share and --flag-below contradict each other: give one")
    if settings.share is not None and not 0.0 <= settings.share <= 1.0:
        raise ConfigError(f"--flag-share {settings.share}: a share is between 0 and 1")
    if settings.folds < 2:
        raise ConfigError(f"--folds {settings.folds}: at least 2 (each row is scored by a reward learned without it)")
    unused = UNUSED_BY_REWARD[settings.reward]
    for key in parse_flat(settings.overrides):
        owner = AUDIT_OWNED.get(key) or AUDIT_OWNED.get(key.split(".")[0])
        if owner:
            raise ConfigError(f"{key} is set by the audit itself ({owner})")
        why = unused.get(key) or unused.get(key.split(".")[0])
        if why:
            raise ConfigError(f"{key} is not used by the {settings.reward} audit: {why}")


def fold_generation(config: RunConfig) -> GenerationConfig:
    """How a fold run samples (both fold recipes, SPIN and RFT, sample)."""
    from rewardsft.config import IRFTConfig, RFTConfig

    assert isinstance(config, IRFTConfig | RFTConfig)
    return config.generation


def check_samples(settings: AuditSettings, template: RunConfig) -> None:
    if settings.against_samples > 1 and not fold_generation(template).do_sample:
        raise ConfigError(
            f"--against-samples {settings.against_samples} with generation.do_sample=false draws the same greedy "
            "answer every time: use 1, or sample"
        )


def parse_flat(overrides: Sequence[str]) -> list[str]:
    """The dotted keys of ``KEY=VALUE`` overrides (values checked by :func:`parse_overrides`)."""
    parse_overrides(list(overrides))
    return [pair.partition("=")[0] for pair in overrides]


def row_key(ex: Example) -> str:
    """What makes two rows the same demonstration (a rejected side, which no recipe here trains on, does not)."""
    return json.dumps([ex.prompt, ex.response], sort_keys=True, ensure_ascii=False)


def prepare_out(settings: AuditSettings, stamp: str, legacy: str) -> Path:
    """A new folder, or this audit's own folder with the same settings and rows (continued); ``--overwrite``
    empties an audit folder (any other non-empty folder is refused). ``legacy``: the fingerprint as a folder
    written before paths were made absolute holds it (its paths as typed, read from the current folder)."""
    out = settings.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out is the audit's folder")
    settings_file = out / "settings.json"
    if out.is_dir() and any(out.iterdir()) and not settings_file.is_file():
        raise ConfigError(f"{out} exists and is not an audit folder; choose another --out")
    if settings.overwrite and out.exists():
        shutil.rmtree(out)
    now = {**portable(settings), "fingerprint": stamp}
    if out.is_dir() and any(out.iterdir()):
        # a setting added since the folder was written has its default there
        defaults = {f.name: f.default for f in dataclasses.fields(AuditSettings)}
        before = {**defaults, **json.loads(settings_file.read_text())}
        before |= {k: absolute(str(before[k])) for k in ("model", "data", "out")}
        if before.get("fingerprint") == legacy:
            before["fingerprint"] = stamp
        free = ("overwrite", "keep_models", "share", "below")
        changed = [k for k in now if k not in free and before.get(k) != now[k]]
        if changed == ["fingerprint"]:
            raise ConfigError(
                f"{out} is an audit of other rows or another start model (the data or the model changed since): "
                "use another --out, or --overwrite to start again"
            )
        if changed:
            raise ConfigError(
                f"{out} is an audit made with {changed[0]}={before.get(changed[0])!r}, not {now[changed[0]]!r}: "
                "use another --out, or --overwrite to start again"
            )
    out.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(now, indent=2))
    (out / AUDIT_FILE).unlink(missing_ok=True)  # written last, when the audit is complete
    return out


def with_absolute_paths(settings: AuditSettings) -> AuditSettings:
    """Local paths made absolute, so a rerun from another folder is the same audit."""
    out = Path(absolute(str(settings.out), always=True))
    return dataclasses.replace(settings, model=absolute(settings.model), data=absolute(settings.data), out=out)


def absolute(path: str, always: bool = False) -> str:
    """``path`` made absolute where it exists (or ``always``); else as given (a hub id)."""
    local = Path(path).expanduser()
    return str(local.resolve()) if always or local.exists() else path


def portable(settings: AuditSettings) -> dict[str, Any]:
    values = asdict(settings)
    values["out"] = str(settings.out)
    values["overrides"] = list(settings.overrides)
    return values


def read_rows(settings: AuditSettings) -> Rows:
    """Every row, the ones the loader rejects set aside by line (never dropped silently)."""
    raw, source = load_rows(settings.data, settings.split)
    parsed, rejected = parse_each_row(raw, source, settings.fmt)
    if len(parsed) < 2 * settings.folds:
        raise DataError(
            f"{source}: {len(parsed)} usable rows; the audit needs at least {2 * settings.folds} "
            f"for {settings.folds} folds"
        )
    lines = [line for line, _ in parsed]
    return Rows(source, lines, [ex for _, ex in parsed], [raw[line - 1] for line in lines], rejected)


def fold_config(
    settings: AuditSettings, folder: Path, data: str, n_train: int, start: str | None = None, resume: bool = False
) -> RunConfig:
    """The fold's run: RFT with no policy step (explicit) or SPIN (implicit) on the other folds' rows."""
    method = METHOD[settings.reward]
    base = load_config(method, overrides=[f"model.name_or_path={start or settings.model}", *settings.overrides])
    if settings.reward == "explicit":
        per_round = min(base.train.batch_size, n_train)
        length = [
            "rft.policy_steps=0",
            f"rft.prompts_per_iteration={per_round}",
            f"rft.iterations={math.ceil(settings.passes * n_train / per_round)}",
        ]
    else:
        # one SPIN stage (one snapshot, one round of samples) of --passes passes over the other folds
        length = ["irft.stages=1", "train.epochs=1", f"irft.epochs_per_stage={settings.passes}"]
    mine = [
        f"model.name_or_path={start or settings.model}",
        f"data.path={data}",
        f"output_dir={folder / 'run'}",
        f"seed={settings.seed}",
        "logging.progress=false",
        *length,
        *(["resume=true"] if resume else []),
    ]
    return load_config(method, overrides=[*render_overrides(settings), *settings.overrides, *mine])


def render_overrides(settings: AuditSettings) -> list[str]:
    """A run folder as ``--model``: every fold trains and renders exactly as that run did."""
    run = run_of(settings.model)
    if run is None:
        return []
    keys = {key for key in parse_flat(settings.overrides) if key.startswith("data.")}
    ours = asdict(run_render_settings(run))
    clash = sorted(k for k in keys if k.removeprefix("data.") in ours)
    if clash:
        raise ConfigError(f"{settings.model} is a run, which renders prompts as it trained: drop {', '.join(clash)}")
    return [f"data.{key}={json.dumps(value, ensure_ascii=False)}" for key, value in ours.items()]


def start_model(settings: AuditSettings, template: RunConfig) -> tuple[str, Rendering]:
    """The model every fold starts from (a run folder stands for its ``final/``) and how its prompts render."""
    run = run_of(settings.model)
    if Path(settings.model).name == REWARD_MODEL:
        raise ConfigError(f"{settings.model} is a reward model; --model is the policy the audit starts from")
    path = str(run / FINAL) if run is not None and Path(settings.model) == run else settings.model
    rendering: RenderSettings = run_render_settings(run) if run is not None else render_settings(template.data)
    return path, Rendering(path, rendering)


# ---------------------------------------------------------------- the folds


def fold_rewards(
    settings: AuditSettings,
    out: Path,
    fold: int,
    start: str,
    template: RunConfig,
    train: Sequence[Example],
    held: Sequence[Example],
) -> tuple[list[float], list[float]]:
    """Each held-out row's reward under the reward learned on ``train``, and the mean reward of the start model's
    samples for its prompt (0 without ``--against-samples``); written once per fold."""
    folder = out / "folds" / str(fold)
    done = folder / "rewards.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        if isinstance(saved, list):  # written before --against-samples existed: the rows' rewards alone
            saved = {"rewards": saved, "sample_rewards": [0.0] * len(saved)}
        return [float(v) for v in saved["rewards"]], [float(v) for v in saved["sample_rewards"]]
    folder.mkdir(parents=True, exist_ok=True)
    data = write_rows(folder / "train.jsonl", list(train))
    run = train_reward(settings, folder, data, len(train), start)
    model = start_config(template, start)

    def reward_of(examples: Sequence[Example]) -> list[float]:
        if settings.reward == "explicit":
            return explicit_rewards(run, examples)
        return implicit_rewards(run, model, examples)

    rewards = reward_of(held)
    against = [0.0] * len(held)
    if settings.against_samples:
        against = sample_rewards(settings, folder, run, model, held, fold, reward_of)
    done.write_text(json.dumps({"rewards": rewards, "sample_rewards": against}))
    if not settings.keep_models:
        shutil.rmtree(run, ignore_errors=True)
    return rewards, against


def sample_rewards(
    settings: AuditSettings,
    folder: Path,
    run: Path,
    model: ModelConfig,
    held: Sequence[Example],
    fold: int,
    reward_of: Callable[[Sequence[Example]], list[float]],
) -> list[float]:
    """Per held-out row, the mean reward of ``--against-samples`` samples of the start model for its prompt,
    drawn as the fold run drew its own (its rendering and sampling settings); the samples are kept beside."""
    from rewardsft.generation import sample_responses
    from rewardsft.training.step import derive_seed

    n = settings.against_samples
    trained = run_config(run)
    rendering = Rendering(model.name_or_path, render_settings(trained.data))
    prompts = [ex.prompt for ex in held]
    seed = derive_seed(settings.seed, "audit-samples", fold)
    drawn = sample_responses(rendering, prompts, fold_generation(trained), seed, n, model)
    samples = [Example(prompts[j // n], r.text) for j, r in enumerate(drawn)]  # prompt-major, n per prompt
    write_rows(folder / "samples.jsonl", samples)
    values = reward_of(samples)
    means = []
    for i in range(len(held)):
        usable = [v for v in values[i * n : (i + 1) * n] if math.isfinite(v)]
        means.append(sum(usable) / len(usable) if usable else math.nan)  # none scored: the row's reward alone
    return means


def train_reward(settings: AuditSettings, folder: Path, data: str, n_train: int, start: str) -> Path:
    from rewardsft.recipes import run_recipe

    run = folder / "run"
    ready = run / (REWARD_MODEL if settings.reward == "explicit" else FINAL)
    if not ready.is_dir():
        # a fold's run that was stopped continues from its last checkpoint
        run_recipe(fold_config(settings, folder, data, n_train, start, resume=run.is_dir() and any(run.iterdir())))
    shutil.rmtree(run / CHECKPOINTS, ignore_errors=True)
    if settings.reward == "explicit":
        shutil.rmtree(run / FINAL, ignore_errors=True)  # no policy step: final/ is the start model again
    return run


def explicit_rewards(run: Path, held: Sequence[Example]) -> list[float]:
    from rewardsft.scoring import RewardScorer

    return RewardScorer(run / REWARD_MODEL).score([(ex.prompt, ex.response) for ex in held])


def implicit_rewards(run: Path, start: ModelConfig, held: Sequence[Example]) -> list[float]:
    """β·log π_θ(y|x)/π_start(y|x) of each row's response y, the reward SPIN's loss is written in; both models
    score the same token ids (the fold run's rendering, which is the start's)."""
    from rewardsft.config import IRFTConfig

    trained_config = run_config(run)
    settings = render_settings(trained_config.data)
    local = dataclasses.replace(start, name_or_path=str(run / FINAL), revision=None, gguf_file=None)
    trained = response_logps(local, settings, held)
    before = response_logps(start, settings, held)
    assert isinstance(trained_config, IRFTConfig)  # the implicit reward's fold runs are SPIN
    return [trained_config.irft.beta * (a[0] - b[0]) for a, b in zip(trained, before, strict=True)]


def start_config(template: RunConfig, start: str) -> ModelConfig:
    """How to load the start model: the user's model settings (revision, GGUF file, dtype, ...) for the model
    they named, a plain local folder for a run's ``final/``."""
    if start == template.model.name_or_path:
        return template.model
    return dataclasses.replace(template.model, name_or_path=start, revision=None, gguf_file=None)


def response_logps(
    cfg: ModelConfig, settings: RenderSettings, examples: Sequence[Example]
) -> list[tuple[float, float]]:
    """(sum, mean per token) of each response's log-probability under ``model``, the prompt rendered by
    ``settings`` (nan for a row with no room for its response)."""
    import torch

    from rewardsft.data import Renderer
    from rewardsft.data.tokenize import tokenize_examples
    from rewardsft.eval.logprob_gap import sequence_logp_table
    from rewardsft.models import load_causal_lm, load_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg)
    renderer = Renderer.from_settings(tokenizer, settings)
    tokenized, _ = tokenize_examples(examples, renderer, settings.max_length, settings.max_prompt_length)
    table = sequence_logp_table(load_causal_lm(cfg, device), tokenized, 16, tokenizer.pad_token_id).tolist()
    out = [(math.nan, math.nan)] * len(examples)
    for ex, (total, mean) in zip(tokenized, table, strict=True):
        out[ex.index] = (total, mean)
    return out


def baseline_loglik(
    out: Path, examples: Sequence[Example], start: ModelConfig, settings: RenderSettings
) -> list[float]:
    """The start model's mean log-likelihood per token of each row's response (high-NLL filtering's measure)."""
    path = out / "baseline.json"
    if path.is_file():
        return [float(v) for v in json.loads(path.read_text())]
    values = [mean for _, mean in response_logps(start, settings, examples)]
    path.write_text(json.dumps(values))
    return values
