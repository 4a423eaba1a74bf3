"""The Python API: the CLI's functions for notebooks and scripts, with the same code paths and no second
implementation. Every name here is re-exported from :mod:`rewardsft` and listed in ``rewardsft.__all__``; the
rest of the package is internal.

Bad input raises :class:`rewardsft.ConfigError` (the CLI turns it into exit 2) with the file, row and field or
the setting named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rewardsft.config import Overrides, RunConfig, load_config, nest_values
from rewardsft.errors import ConfigError

if TYPE_CHECKING:
    from rewardsft.data.formats import Prompt
    from rewardsft.eval.judges import Judge

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class RunResult:
    """What a training run left on disk, and its last logged metrics."""

    output_dir: Path
    final_dir: Path
    """``final/``: loads with ``AutoModelForCausalLM.from_pretrained`` (LoRA merged)."""
    reward_model_dir: Path | None
    """RFT's ``reward_model/`` (``AutoModelForSequenceClassification``; :class:`RewardModel`); else None."""
    adapter_dir: Path | None
    """``adapter/`` of a LoRA run, when base + adapter reproduces ``final/``; else None."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The last logged value of every metric (``metrics.jsonl``)."""
    config: RunConfig | None = None

    @classmethod
    def from_output_dir(cls, output_dir: PathLike, config: RunConfig | None = None) -> RunResult:
        from rewardsft.layout import ADAPTER, FINAL, REWARD_MODEL
        from rewardsft.training.metrics import METRICS_FILE, read_metrics

        out = Path(output_dir)
        metrics: dict[str, float] = {}
        if (out / METRICS_FILE).is_file():
            for row in read_metrics(out / METRICS_FILE):
                metrics.update({k: v for k, v in row.items() if isinstance(v, int | float)})
        return cls(
            output_dir=out,
            final_dir=out / FINAL,
            reward_model_dir=out / REWARD_MODEL if (out / REWARD_MODEL).is_dir() else None,
            adapter_dir=out / ADAPTER if (out / ADAPTER).is_dir() else None,
            metrics=metrics,
            config=config,
        )


def train(
    method: str | RunConfig, config: PathLike | None = None, overrides: Overrides | None = None, **settings: Any
) -> RunResult:
    """Train with SFT, IRFT or RFT (``rewardsft train``): ``train("irft", model={"name_or_path": ...}, ...)``.

    ``method`` may also be a :class:`RunConfig` from :func:`load_config`. Resumes with ``resume=True`` and
    refuses to overwrite a finished run unless ``overwrite=True``, exactly like the CLI.
    """
    from rewardsft.recipes import run_recipe

    if isinstance(method, RunConfig):
        if config is not None or overrides is not None or settings:
            raise TypeError("train(RunConfig) takes no further settings: put them in load_config(...)")
        resolved = method
    else:
        resolved = load_config(method, config, overrides, **settings)
    run_recipe(resolved)
    return RunResult.from_output_dir(resolved.output_dir, resolved)


def _render(**flags: Any) -> dict[str, Any]:
    """Prompt rendering for models that are not runs (a run renders as it trained and refuses these)."""
    return {k: v for k, v in flags.items() if v is not None}


def evaluate_gap(
    model: PathLike,
    pairs: PathLike,
    *,
    out: PathLike | None = None,
    ref_model: PathLike | None = None,
    beta: float = 0.1,
    batch_size: int = 16,
    max_rows: int | None = None,
    split: str = "train",
    **render: Any,
) -> dict[str, Any]:
    """Held-out log-prob gap and pair accuracy (``rewardsft eval gap``); returns the summary it writes.

    ``render``: ``system_prompt``, ``fallback_template``, ``text_prompts``, ``max_length``, ``max_prompt_length``
    for a model that is not a run.
    """
    from rewardsft.eval.logprob_gap import GapSettings, logprob_gap

    settings = GapSettings(split=split, beta=beta, batch_size=batch_size, max_rows=max_rows)
    ref = os.fspath(ref_model) if ref_model is not None else None
    target = Path(out) if out is not None else None
    return logprob_gap(os.fspath(model), os.fspath(pairs), target, ref, settings, render=_render(**render))


def _sampling(max_new_tokens: int, temperature: float) -> Any:
    """The evaluations' sampling: temperature 0 decodes greedily (as the CLI's ``--temperature 0``)."""
    from rewardsft.config import GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, do_sample=temperature > 0)


def win_rate(
    model: PathLike,
    baseline: PathLike,
    prompts: PathLike,
    judge: str | Judge,
    *,
    out: PathLike | None = None,
    n: int | None = None,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    seed: int = 0,
    tie_margin: float = 0.0,
    split: str = "train",
    **render: Any,
) -> dict[str, Any]:
    """Win rate of ``model`` against ``baseline`` under ``judge`` (``rewardsft eval winrate``).

    ``judge``: a reward-model folder or hub id, ``"package.module:function"``, or a Python callable taking a list
    of (prompt, response) and returning one score each. Returns the summary it writes.
    """
    from rewardsft.eval.win_rate import WinRateSettings
    from rewardsft.eval.win_rate import win_rate as _win_rate

    gen = _sampling(max_new_tokens, temperature)
    settings = WinRateSettings(n=n, split=split, seed=seed, tie_margin=tie_margin)
    target = Path(out) if out is not None else None
    judge_spec = os.fspath(judge) if isinstance(judge, os.PathLike) else judge
    return _win_rate(
        os.fspath(model), os.fspath(baseline), os.fspath(prompts), judge_spec, target, gen, settings, _render(**render)
    )


def human_likeness(
    model: PathLike,
    prompts: PathLike,
    references: PathLike,
    *,
    out: PathLike | None = None,
    encoder: str = "minilm",
    n: int | None = None,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    seed: int = 0,
    mauve_seeds: int = 5,
    split: str = "train",
    **render: Any,
) -> dict[str, Any]:
    """How human ``model``'s samples read against held-out human demonstrations (``rewardsft eval
    human-likeness``): MAUVE and an out-of-fold discriminator on sentence embeddings, with the value two halves of
    the references reach as a ceiling. ``encoder``: ``minilm`` (the all-MiniLM-L6-v2 wheel) or any local folder
    or hub id ``AutoModel`` loads. Returns the summary it writes."""
    from rewardsft.eval.human_likeness import LikenessSettings
    from rewardsft.eval.human_likeness import human_likeness as _human_likeness

    gen = _sampling(max_new_tokens, temperature)
    settings = LikenessSettings(n=n, split=split, seed=seed, encoder=encoder, mauve_seeds=mauve_seeds)
    target = Path(out) if out is not None else None
    return _human_likeness(
        os.fspath(model), os.fspath(prompts), os.fspath(references), target, gen, settings, _render(**render)
    )


def compare(runs: Sequence[PathLike], baseline: PathLike, evals: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Paired differences of runs (seeds grouped) from a baseline run (``rewardsft eval compare``)."""
    from rewardsft.eval.paired import compare_runs

    return compare_runs([Path(r) for r in runs], Path(baseline), evals)


def report(runs: Sequence[PathLike], out: PathLike, baseline: PathLike | None = None) -> Path:
    """Markdown + HTML report with plots, and model cards (``rewardsft report``); returns ``report.md``."""
    from rewardsft.eval.report import build_report

    return build_report([Path(r) for r in runs], Path(out), Path(baseline) if baseline is not None else None)


class RewardModel:
    """A reward model folder (RFT's ``reward_model/`` or any sequence-classification model) that scores
    responses: ``RewardModel.from_pretrained(run / "reward_model").score(prompts, responses)``.

    A run's reward model renders prompts exactly as the run trained; another model takes the ``render`` flags.
    """

    def __init__(self, scorer: Any) -> None:
        self._scorer = scorer

    @classmethod
    def from_pretrained(cls, path: PathLike, batch_size: int = 16, **render: Any) -> RewardModel:
        from rewardsft.layout import rendering_for
        from rewardsft.scoring import RewardScorer

        return cls(RewardScorer(rendering_for(os.fspath(path), **_render(**render)), batch_size=batch_size))

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One reward per (prompt, response); prompts are text or chat messages."""
        if len(prompts) != len(responses):
            raise ConfigError(f"{len(prompts)} prompts but {len(responses)} responses: give one response per prompt")
        return self._scorer.score(list(zip(prompts, responses, strict=True)))


def study(
    model: PathLike,
    data: PathLike,
    out: PathLike,
    *,
    pairs: PathLike | None = None,
    methods: Sequence[str] | None = None,
    seeds: int | None = None,
    lrs: Sequence[float] | None = None,
    passes: Sequence[int] = (1,),
    budget: int = 1,
    judge: str | Judge | None = None,
    encoder: str | None = None,
    overrides: Overrides | None = None,
    config: PathLike | None = None,
    quick: bool = False,
    overwrite: bool = False,
    keep_tries: bool = False,
    split: str = "train",
    format: str = "auto",
    dev_share: float = 0.5,
    holdout: float = 0.2,
) -> dict[str, Any]:
    """Does reward learning beat tuned SFT on this data? (``rewardsft study``; docs/study.md.)

    Tunes every method's learning rate (``lrs``; and ``passes`` from the base) on a dev part of ``pairs`` (without
    pairs: of held-out demonstrations), trains the chosen settings at ``seeds`` seeds, adds a budget-matched SFT
    control for each ``*-from-sft`` method, and judges on the test part. ``methods``: ``spin``, ``irft-t4``,
    ``rft``, ``spin-from-sft``, ... (SFT is always in). ``overrides`` reach every run whose recipe reads them.
    ``encoder`` (``minilm`` or a model folder) adds the human-likeness of every test run's samples.
    The weights of dev tries that were not chosen are removed unless ``keep_tries``. Rerunning continues the study. Returns what ``DIR/study.json`` holds (``answer``: the verdict in words).
    """
    from rewardsft.studies.runner import resolve_settings, run_study
    from rewardsft.studies.split import DataSpec

    spec = DataSpec(os.fspath(data), os.fspath(pairs) if pairs is not None else None, split, format, dev_share, holdout)
    settings = resolve_settings(
        model=os.fspath(model),
        data=spec,
        out=Path(out),
        methods=methods,
        seeds=seeds,
        lrs=lrs,
        passes=passes,
        budget=budget,
        judge=os.fspath(judge) if isinstance(judge, os.PathLike) else judge,
        encoder=encoder,
        overrides=_override_pairs(overrides),
        config=os.fspath(config) if config is not None else None,
        quick=quick,
        overwrite=overwrite,
        keep_tries=keep_tries,
    )
    report_path = run_study(settings)
    return dict(json.loads((report_path.parent / "study.json").read_text()))


def _override_pairs(overrides: Overrides | None) -> tuple[str, ...]:
    """Overrides as the CLI's ``KEY=VALUE`` strings (a mapping's values written as YAML-readable JSON)."""
    from rewardsft.config import flatten

    if overrides is None:
        return ()
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of KEY=VALUE strings or a mapping, not the string {overrides!r}")
    if isinstance(overrides, Mapping):
        pairs = flatten(nest_values(overrides)).items()
        return tuple(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in pairs)
    return tuple(overrides)


def audit(
    model: PathLike,
    data: PathLike,
    out: PathLike,
    *,
    reward: str = "implicit",
    folds: int = 5,
    flag_share: float | None = None,
    flag_below: float | None = None,
    passes: int = 2,
    seed: int = 0,
    overrides: Overrides | None = None,
    against_samples: int = 0,
    keep_models: bool = False,
    overwrite: bool = False,
    split: str = "train",
    format: str = "auto",
) -> dict[str, Any]:
    """Which demonstrations are probably bad? (``rewardsft audit``; docs/audit.md.)

    Scores every row of ``data`` out of fold with the reward learned from the other rows (``reward``:
    ``implicit``, SPIN's β·log π_θ/π_start, or ``explicit``, RFT's Bradley-Terry reward model), flags the lowest
    ``flag_share`` (default 0.1) or those below ``flag_below``; ``against_samples=N`` scores each row against
    the mean reward of N start-model samples for its prompt (default 0: the row's reward alone); and
    writes ``scores.jsonl``, ``flagged.jsonl``, ``clean.jsonl``, ``rejected.jsonl`` and a report into ``out``.
    Rerunning continues it. Returns what ``OUT/audit.json`` holds.
    """
    from rewardsft.audits.runner import AuditSettings, run_audit

    settings = AuditSettings(
        model=os.fspath(model),
        data=os.fspath(data),
        out=Path(out),
        reward=reward,  # type: ignore[arg-type]
        folds=folds,
        share=flag_share,
        below=flag_below,
        passes=passes,
        seed=seed,
        fmt=format,
        split=split,
        overrides=tuple(_override_pairs(overrides)),
        against_samples=against_samples,
        keep_models=keep_models,
        overwrite=overwrite,
    )
    report_path = run_audit(settings)
    return dict(json.loads((report_path.parent / "audit.json").read_text()))
