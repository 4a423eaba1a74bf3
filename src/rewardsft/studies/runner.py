"""``rewardsft study``: tune every method on the dev part, train the chosen settings over seeds, evaluate on the
test part, and write the verdict (:mod:`rewardsft.studies.verdict`).

Every run trains through :func:`rewardsft.recipes.run_recipe` from a config :func:`rewardsft.config.load_config`
resolves, exactly as ``rewardsft train`` does; a finished run (``final/``) and a finished evaluation
(``summary.json``) are never redone, and an interrupted run resumes from its last checkpoint, so rerunning the
command continues a study and a finished study reruns in seconds.

Layout of ``DIR``::

    split/            train.jsonl, dev/test pairs, split.json
    base/eval/        the base model's dev and test gap
    runs/NAME/        one training run per trial (NAME = method-lrX-pP-sS), with eval/dev-gap, eval/test-gap
    tuning.json       every dev try and the setting chosen per method
    study.json, study.md   the verdict
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rewardsft.config import GenerationConfig, IRFTConfig, RunConfig, load_config, reads
from rewardsft.errors import ConfigError
from rewardsft.layout import ADAPTER, CHECKPOINTS, EVAL, FINAL, REWARD_MODEL, SUMMARY_FILE, render_settings
from rewardsft.studies.plan import (
    MethodSpec,
    Trial,
    budget_of,
    check_grid,
    control_spec,
    matched_control,
    parse_methods,
    rft_overrides,
    tuning_trials,
)
from rewardsft.studies.split import DataSpec, Split, make_split, write_rows
from rewardsft.studies.verdict import STUDY_METRICS

DEFAULT_METHODS = ("spin", "irft-t4", "spin-from-sft")
DEFAULT_LRS = (1e-6, 1e-5, 1e-4)
DEFAULT_SEEDS = 3
QUICK_METHODS = ("spin", "spin-from-sft")
QUICK_LRS = (1e-4, 1e-3)
QUICK_OVERRIDES = ("data.max_rows=16", "train.batch_size=4", "generation.max_new_tokens=8")
STUDY_DEFAULTS = ("logging.progress=false",)
"""Every run's settings before the user's: the study prints its own progress line per run."""
STUDY_OWNED = {
    "model.name_or_path": "--model (from-SFT runs start from the tuned SFT model)",
    "data.path": "--data",
    "data.split": "--split",
    "data.format": "--format",
    "data.eval_path": "--pairs",
    "data.eval_split": "--pairs",
    "output_dir": "--out",
    "seed": "--seeds",
    "resume": "rerunning the command (it resumes)",
    "overwrite": "--overwrite",
    "optim.lr": "--lrs (the study tunes it)",
    "train.epochs": "--passes (from the base) and --budget (from SFT)",
    "train.max_steps": "--passes and --budget",
    "irft.stages": "the method's name (irft-t4 is 4 stages, spin is 1)",
    "sft_phase.epochs": "the -from-sft methods (they start from the tuned SFT model) and --budget",
    "sft_phase.lr": "the -from-sft methods (they start from the SFT model tuned over --lrs)",
    "rft.iterations": "--passes / --budget (RFT runs one round per SFT step of that many passes)",
    "rft.prompts_per_iteration": "train.batch_size (one round takes a batch of demonstration prompts)",
}
EVAL_SEED = 1234
"""Seed of the base model's samples (no-pairs studies) and of the win-rate samples."""
TUNING_FILE = "tuning.json"
EVAL_LOG = "eval.log"
PRUNED = "pruned.json"
"""In a dev try's folder whose weights were removed once another try was chosen (``StudySettings.keep_tries``)."""
WALL_TIME = "wall_time.json"


@dataclass(frozen=True)
class StudySettings:
    """Everything ``rewardsft study`` takes (see ``rewardsft study --help`` and docs/study.md)."""

    model: str
    data: DataSpec
    out: Path
    methods: tuple[str, ...] = DEFAULT_METHODS
    seeds: int = DEFAULT_SEEDS
    lrs: tuple[float, ...] = DEFAULT_LRS
    passes: tuple[int, ...] = (1,)
    """Pass counts tuned for the methods that start from the base (SFT included)."""
    budget: int = 1
    """Further passes over the demonstrations for the methods that start from the tuned SFT model."""
    overrides: tuple[str, ...] = ()
    """``KEY=VALUE`` settings for every run whose recipe reads them (``generation.*`` reaches IRFT and RFT only).
    ``--quick`` puts its tiny budgets (:data:`QUICK_OVERRIDES`) first."""
    config: str | None = None
    """A YAML file of settings, layered under ``overrides``, for every run that reads them."""
    judge: str | Callable[..., list[float]] | None = None
    """A win-rate judge (as ``rewardsft eval winrate --judge``): each test run's samples against tuned SFT's."""
    encoder: str | None = None
    """A sentence encoder (``minilm`` or a model folder/hub id) for the human-likeness of each test run's samples
    against the test part's human responses (``rewardsft eval human-likeness``); None: not measured."""
    quick: bool = False
    overwrite: bool = False
    keep_tries: bool = False
    """Keep the weights of the runs the verdict does not rest on (default: removed once the verdict is written;
    their configs, logs and evaluations stay, and a rerun trains one again only if it is chosen after all)."""
    eval_batch_size: int = 16


# ---------------------------------------------------------------- settings of each run


def override_key(pair: str) -> str:
    key, sep, _ = pair.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {pair!r} is not KEY=VALUE (e.g. data.max_length=256)")
    return key


def check_overrides(overrides: Sequence[str], methods: Sequence[str]) -> None:
    """Refuse settings the study owns (naming the flag that sets them) and settings no method of it reads."""
    for pair in overrides:
        key = override_key(pair)
        owner = STUDY_OWNED.get(key) or STUDY_OWNED.get(key.split(".")[0])
        if owner is not None:
            raise ConfigError(f"{key} is set by the study, not by an override: use {owner}")
        if all(not reads(method, key) for method in methods):
            raise ConfigError(f"{key} is read by no method of this study ({', '.join(sorted(set(methods)))})")


def routed(overrides: Sequence[str], method: str) -> list[str]:
    """The overrides ``method`` reads: ``generation.*`` goes to IRFT and RFT, ``irft.*`` to IRFT, ..."""
    return [pair for pair in overrides if reads(method, override_key(pair))]


def config_file_pairs(path: str | None) -> list[str]:
    """A settings YAML as ``KEY=VALUE`` overrides (layered under the command line's)."""
    if path is None:
        return []
    from rewardsft.config import flatten, read_yaml

    return [f"{key}={json.dumps(value)}" for key, value in flatten(read_yaml(Path(path))).items()]


def resolve_settings(
    *,
    methods: Sequence[str] | None,
    seeds: int | None,
    lrs: Sequence[float] | None,
    quick: bool,
    **given: Any,
) -> StudySettings:
    """The settings with the defaults filled in (``--quick``'s own where the user gave none): the one place
    the CLI and :func:`rewardsft.study` take their defaults from."""
    return StudySettings(
        methods=tuple(methods) if methods else QUICK_METHODS if quick else DEFAULT_METHODS,
        seeds=seeds if seeds is not None else 1 if quick else DEFAULT_SEEDS,
        lrs=tuple(lrs) if lrs else QUICK_LRS if quick else DEFAULT_LRS,
        quick=quick,
        passes=tuple(given.pop("passes")),
        overrides=tuple(given.pop("overrides")),
        **given,
    )


# ---------------------------------------------------------------- the study


@dataclass
class Study:
    settings: StudySettings
    split: Split
    specs: list[MethodSpec]
    render: dict[str, Any]
    """Rendering flags for the base model (not a run): the runs' data settings."""
    user: list[str] = field(default_factory=list)
    """The user's settings for every run (the config file's, then the command line's), routed per recipe."""
    chosen: dict[str, Trial] = field(default_factory=dict)
    """Per method, the setting dev chose (seed 0)."""
    tries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tuning_notes: dict[str, str | None] = field(default_factory=dict)
    """Per method, why its choice fell outside the rule (:func:`choose`), if it did."""
    floor: float = -math.inf
    """The base model's mean log-likelihood of the dev preferred responses: the rule's floor."""
    clock: Progress | None = None
    _resolved: dict[str, RunConfig] = field(default_factory=dict, repr=False)

    @property
    def out(self) -> Path:
        return self.settings.out

    def run_dir(self, trial: Trial) -> Path:
        return self.out / "runs" / trial.name

    def start_of(self, trial: Trial) -> str:
        if not trial.spec.from_sft:
            return self.settings.model
        sft = replace(self.chosen["sft"], seed=trial.seed)
        return str(self.run_dir(sft) / FINAL)

    def config(self, trial: Trial, resume: bool = False) -> RunConfig:
        spec = trial.spec
        length = [f"train.epochs={trial.passes}"] if spec.method != "rft" else []
        if spec.method == "rft":
            length = list(rft_overrides(self.n_train, self.batch_size(), trial.passes))
        if spec.is_control:
            length = []  # the control's batch and steps are its overrides
        mine = [
            f"model.name_or_path={self.start_of(trial)}",
            f"data.path={self.split.file('train')}",
            f"output_dir={self.run_dir(trial)}",
            f"seed={trial.seed}",
            f"optim.lr={trial.lr}",
            *length,
            *spec.overrides,
            *(["resume=true"] if resume else []),
        ]
        return load_config(spec.method, overrides=[*STUDY_DEFAULTS, *routed(self.user, spec.method), *mine])

    @property
    def n_train(self) -> int:
        """Demonstrations each run trains on: the training part, or its first ``data.max_rows``."""
        cap = self.recipe_settings("sft").data.max_rows
        return min(self.split.counts["train"], cap if cap is not None else self.split.counts["train"])

    def batch_size(self) -> int:
        return self.recipe_settings("sft").train.batch_size

    def recipe_settings(self, method: str) -> RunConfig:
        """What every run of ``method`` shares: the study's defaults and the user's settings that recipe reads
        (resolved once per method; a run's own model, data, lr and length come on top in :meth:`config`)."""
        if method not in self._resolved:
            user = routed(self.user, method)
            overrides = [*STUDY_DEFAULTS, *user, f"data.path={self.split.file('train')}"]
            self._resolved[method] = load_config(method, overrides=overrides)
        return self._resolved[method]

    def train(self, trial: Trial, weights: bool = True) -> Path:
        """The trial's run folder, trained (or resumed) unless it has ``final/`` already; a finished try whose
        weights were pruned counts as finished unless its ``weights`` are wanted (then it is trained again)."""
        from rewardsft.recipes import run_recipe

        run = self.run_dir(trial)
        if (run / "config.yaml").is_file():
            # Finished or interrupted: either way it continues only with the settings it was started with.
            check_same_settings(run, self.config(trial), self.out)
        if (run / PRUNED).is_file():
            if not weights:
                return run
            shutil.rmtree(run)  # chosen now (the rule or the grid changed): the same run, trained afresh
        elif (run / FINAL).is_dir():
            return run
        # Any trace of an earlier launch (a config, a checkpoint) is continued; with no checkpoint it starts over.
        resume = run.is_dir() and any(run.iterdir())
        if self.clock:
            self.clock.begin(trial, resume)
        began, finished = time.time(), False
        try:
            with logged_to(self.out / "runs" / f"{trial.name}.log"):
                run_recipe(self.config(trial, resume=resume))
            finished = True
            # A finished run is never resumed (final/ is what the study reads): its optimiser-state checkpoints
            # only fill the disk (SmolLM2-135M: ~1.5 GB a run; a 35-run study filled 70 GB).
            shutil.rmtree(run / CHECKPOINTS, ignore_errors=True)
        finally:
            if run.is_dir():
                record_launch(run, {"start": began, "end": time.time(), "resumed": resume, "finished": finished})
        if self.clock:
            self.clock.end(trial, time.time() - began)
        return run

    # ------------------------------------------------------------ evaluation

    def pairs_file(self, part: str) -> str:
        if self.split.kind == "pairs":
            return self.split.file(part)
        return str(Path(self.split.folder) / f"{part}-pairs.jsonl")

    def gap(self, model: str, folder: Path, part: str, render: dict[str, Any]) -> dict[str, Any]:
        """``eval gap`` of ``model`` on the dev or test pairs into ``folder`` (read back when it is there)."""
        from rewardsft.eval.logprob_gap import GapSettings, logprob_gap

        if (folder / SUMMARY_FILE).is_file():
            return dict(json.loads((folder / SUMMARY_FILE).read_text()))
        settings = GapSettings(batch_size=self.settings.eval_batch_size, paired_metrics=STUDY_METRICS)
        with logged_to(self.out / EVAL_LOG):
            return logprob_gap(model, self.pairs_file(part), folder, None, settings, render=render)

    def run_gap(self, run: Path, part: str) -> dict[str, Any]:
        return self.gap(str(run / FINAL), run / EVAL / f"{part}-gap", part, {})

    def base_gap(self, part: str) -> dict[str, Any]:
        return self.gap(self.settings.model, self.out / "base" / EVAL / f"{part}-gap", part, self.render)

    def likeness(self, model: str, folder: Path, render: dict[str, Any]) -> None:
        """Human-likeness of ``model``'s samples on the test prompts against the test part's human responses."""
        from rewardsft.eval.human_likeness import LikenessSettings, human_likeness

        if self.settings.encoder is None:
            return
        wanted = {"settings.encoder": self.settings.encoder, "generation": asdict(self.sampling())}
        if finished(folder, wanted):
            return
        test = self.pairs_file("test")
        settings = LikenessSettings(seed=EVAL_SEED, encoder=self.settings.encoder)
        with logged_to(self.out / EVAL_LOG):
            human_likeness(model, test, test, folder, self.sampling(), settings, render)

    def run_likeness(self, run: Path) -> None:
        self.likeness(str(run / FINAL), run / EVAL / "test-likeness", {})

    def winrate(self, run: Path, sft_run: Path) -> None:
        """Test-prompt samples of ``run`` against tuned SFT's of the same seed, under the user's judge."""
        from rewardsft.eval.win_rate import WinRateSettings, win_rate

        folder = run / EVAL / "test-winrate"
        if self.settings.judge is None or run == sft_run:
            return
        judge = self.settings.judge
        name = judge if isinstance(judge, str) else getattr(judge, "__name__", "callable")
        if finished(folder, {"judge": name, "generation": asdict(self.sampling())}):
            return
        settings = WinRateSettings(seed=EVAL_SEED)
        with logged_to(self.out / EVAL_LOG):
            win_rate(
                str(run / FINAL),
                str(sft_run / FINAL),
                self.pairs_file("test"),
                self.settings.judge,  # type: ignore[arg-type]
                folder,
                self.sampling(),
                settings,
            )

    def sampling(self) -> GenerationConfig:
        """The runs' own sampling settings (an IRFT config's ``generation`` section as the overrides set it)."""
        irft = self.recipe_settings("irft")
        assert isinstance(irft, IRFTConfig)
        return irft.generation


def finished(folder: Path, wanted: dict[str, Any]) -> bool:
    """Whether the evaluation in ``folder`` is complete and was made with the ``wanted`` settings (dotted keys of
    its summary). One made with others (another judge or encoder, other sampling) is removed to be redone, so the
    verdict never mixes evaluations of two settings."""
    path = folder / SUMMARY_FILE
    if not path.is_file():
        return False
    summary = json.loads(path.read_text())
    for key, value in wanted.items():
        found: Any = summary
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if found != value:
            print(f"  {folder} was made with {key}={found!r}, not {value!r}: redoing it", flush=True)
            shutil.rmtree(folder)
            return False
    return True


def check_same_settings(run: Path, config: RunConfig, root: Path) -> None:
    """A run is reused (or resumed) only with the settings this study would train it with now, so a rerun with
    other overrides never mixes runs of two settings under one name. Paths inside the study folder are compared
    relative to it (the folder may have moved: the run's own ``output_dir`` says where it was)."""
    from rewardsft.config import changed_settings, flatten
    from rewardsft.layout import run_config

    done = flatten(run_config(run).to_dict())
    wanted = flatten(config.to_dict())
    # The study folder as it was: as many levels above the run's old output_dir as ``run`` is below ``root`` now
    # (a study's runs/NAME, or a benchmark's NAME directly under its folder).
    depth = len(run.resolve().relative_to(root.resolve()).parts)
    old_root = Path(str(done["output_dir"])).parents[depth - 1]
    done, wanted = portable(done, old_root), portable(wanted, root)
    differ = changed_settings(done, wanted)
    if differ:
        key = differ[0]
        raise ConfigError(
            f"{run} was trained with {key}={done.get(key)!r}, but this study now sets {wanted.get(key)!r}: rerun "
            "with the settings it was started with, or use another --out (or --overwrite)"
        )


def portable(flat: dict[str, Any], root: Path) -> dict[str, Any]:
    """Setting values with the study folder ``root`` written as ``<study>`` (paths of runs and split files)."""
    prefix = str(root)
    return {
        k: "<study>" + v[len(prefix) :] if isinstance(v, str) and v.startswith(prefix) else v for k, v in flat.items()
    }


@contextlib.contextmanager
def logged_to(path: Path) -> Iterator[None]:
    """The output of a run or an evaluation (step lines, loading bars) goes to ``path``, not the terminal, where
    the study prints one line per run; a failure says where its output is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        try:
            yield
        except BaseException:
            print(f"rewardsft study: the output of the failed step is in {path}", file=sys.__stderr__, flush=True)
            raise


def record_launch(run: Path, launch: dict[str, Any]) -> None:
    """Append one launch (``start``/``end``, Unix seconds) to the run's ``wall_time.json`` and update the total:
    a run finished by a resume costs every launch it took."""
    path = run / WALL_TIME
    every = [*launches(path), {**launch, "seconds": launch["end"] - launch["start"]}]
    path.write_text(json.dumps({"seconds": sum(x["seconds"] for x in every), "launches": every}, indent=2))


def launches(path: Path) -> list[dict[str, Any]]:
    """The launches recorded in ``path`` (none if it is missing); the older single-record format
    ``{"seconds", "resumed"}``, which kept the last launch only, reads as one launch."""
    if not path.is_file():
        return []
    record = json.loads(path.read_text())
    return list(record["launches"]) if "launches" in record else [record]


# ---------------------------------------------------------------- progress


@dataclass
class Progress:
    """One line per run, with the time left: the plan's estimate, scaled by how the finished runs compared."""

    estimates: dict[str, float]
    done: int = 0
    spent: float = 0.0
    estimated_spent: float = 0.0
    began: float = field(default_factory=time.time)

    def begin(self, trial: Trial, resume: bool) -> None:
        what = "resuming" if resume else "training"
        print(f"[{time.strftime('%H:%M:%S')}] {what} {trial.name}", flush=True)

    def end(self, trial: Trial, seconds: float) -> None:
        self.done += 1
        self.spent += seconds
        self.estimated_spent += self.estimates.pop(trial.name, seconds)
        scale = self.spent / self.estimated_spent if self.estimated_spent > 0 else 1.0
        left = scale * sum(self.estimates.values())
        print(f"  {trial.name}: {seconds:.0f}s; about {minutes(left)} left ({len(self.estimates)} runs)", flush=True)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# ---------------------------------------------------------------- the steps of a study


def run_study(settings: StudySettings) -> Path:
    """Run (or continue) the study; returns ``DIR/study.md``."""
    from rewardsft.studies.verdict import write_verdict

    check_grid(settings.lrs, settings.passes, settings.budget, settings.seeds)
    # One spelling of the folder (runs record absolute paths; a rerun from elsewhere must find the same runs).
    settings = replace(settings, out=settings.out.expanduser().resolve())
    specs = parse_methods(settings.methods)
    # --quick's tiny budgets first, so the user's own settings win.
    quick = list(QUICK_OVERRIDES) if settings.quick else []
    user = [*quick, *config_file_pairs(settings.config), *settings.overrides]
    check_overrides(user, [s.method for s in specs])
    prepare_out(settings.out, settings.overwrite)
    split = make_split(settings.data, settings.out / "split")
    study = Study(settings, split, specs, {}, user)
    sft_data = study.recipe_settings("sft").data
    study.render = asdict(render_settings(sft_data))
    study.specs = [*specs, *controls_of(study, specs)]
    print(describe(study), flush=True)
    if split.kind == "demonstrations":
        pairs_against_base(study)
    for part in ("dev", "test"):
        study.base_gap(part)
    study.likeness(settings.model, settings.out / "base" / EVAL / "test-likeness", study.render)
    study.clock = Progress(estimate(study))
    left = study.clock.estimates
    if left:
        print(f"estimated time: about {minutes(sum(left.values()))} for {len(left)} runs (rough: from a timed run)")
    else:
        print("nothing left to train: every run of the study is finished")
    tune(study)
    finals = train_seeds(study)
    report = write_verdict(study, finals)
    if not settings.keep_tries:
        pruned = prune_unused(study, finals)
        if pruned:
            print(f"removed the weights of {len(pruned)} runs the verdict does not rest on (--keep-tries keeps them)")
    return report


def prepare_out(out: Path, overwrite: bool) -> None:
    """A new folder, or a study's own folder (continued); anything else is refused, and ``--overwrite`` empties it."""
    if overwrite and out.exists():
        shutil.rmtree(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "split").is_dir():
        raise ConfigError(f"{out} exists and is not a study folder; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def controls_of(study: Study, specs: Sequence[MethodSpec]) -> list[MethodSpec]:
    """One budget-matched SFT control per distinct budget of the from-SFT methods (shared by the methods that
    spend the same), each checked to spend, by the recipe's own count, the budget it was matched to."""
    controls: dict[str, MethodSpec] = {}
    for spec in (s for s in specs if s.from_sft):
        probe = Trial(spec, study.settings.lrs[0], study.settings.budget, seed=0)
        target = budget_of(study.config(replace(probe, spec=replace(spec, from_sft=False))), study.n_train)
        shape = matched_control(target, study.n_train, study.batch_size())
        control = control_spec(spec, shape)
        known = controls.get(control.name)
        controls[control.name] = replace(control, controls=(*known.controls, spec.name)) if known else control
        spent = budget_of(
            study.config(Trial(replace(control, from_sft=False), probe.lr, probe.passes, 0)), study.n_train
        )
        if spent != shape.budget:
            raise AssertionError(f"{control.name} would spend {spent}, not the {shape.budget} it was matched to")
    return list(controls.values())


def describe(study: Study) -> str:
    s, split = study.settings, study.split
    lines = [
        f"study of {s.model} on {s.data.data}: {used_text(study)} training demonstrations, "
        f"{split.counts['dev']} dev and {split.counts['test']} test {'pairs' if split.kind == 'pairs' else 'held-out demonstrations'} "
        f"(split by {split.unit})",
        *(f"  note: {note}" for note in split.notes),
        f"methods: {', '.join(spec.name for spec in study.specs)}; lrs {list(s.lrs)}, passes {list(s.passes)}, "
        f"from-SFT budget {s.budget} pass(es), {s.seeds} seed(s)",
    ]
    return "\n".join(lines)


def used_text(study: Study) -> str:
    """ "24" or "16 of 24" (when ``data.max_rows`` caps what each run trains on)."""
    total = study.split.counts["train"]
    return str(total) if study.n_train == total else f"{study.n_train} of {total} (data.max_rows)"


def pairs_against_base(study: Study) -> None:
    """Without pairs: each held-out demonstration against the base model's own sample for its prompt."""
    from rewardsft.data import load_examples
    from rewardsft.data.formats import Example
    from rewardsft.generation import sample_texts
    from rewardsft.layout import rendering_for

    for part, demos_file in (("dev", study.split.file("dev")), ("test", study.split.file("test"))):
        target = Path(study.pairs_file(part))
        if target.is_file():
            continue
        demos, _ = load_examples(demos_file, "train")
        rendering = rendering_for(study.settings.model, **study.render)
        with logged_to(study.out / EVAL_LOG):
            samples = sample_texts(rendering, [d.prompt for d in demos], study.sampling(), seed=EVAL_SEED)
        pairs = [
            Example(d.prompt, d.response, s if s.strip() else "(empty)") for d, s in zip(demos, samples, strict=True)
        ]
        partial = target.with_suffix(".partial")
        write_rows(partial, pairs)
        partial.replace(target)


def estimate(study: Study) -> dict[str, float]:
    """Seconds per planned run from one timed SFT run of two steps on this machine (kept in ``DIR/calibration``)."""
    from rewardsft.studies.cost import estimate_runs

    return estimate_runs(study, planned_trials(study))


def planned_trials(study: Study) -> list[Trial]:
    """Every trial the study will train, unfinished ones only: each method's dev tries, then its chosen setting
    at the further seeds (the setting dev chose when ``tuning.json`` has it, else its first try stands in)."""
    s = study.settings
    chosen = read_tuning(study)
    trials = []
    for spec in study.specs:
        tries = tuning_trials(spec, s.lrs, s.passes, s.budget)
        pick = next((t for t in tries if t.setting == chosen.get(spec.name)), tries[0])
        trials += [*tries, *(replace(pick, seed=seed) for seed in range(1, s.seeds))]
    return [t for t in trials if not trained(study.run_dir(t))]


def trained(run: Path) -> bool:
    """A finished run: its weights, or the mark of a finished try whose weights were pruned."""
    return (run / FINAL).is_dir() or (run / PRUNED).is_file()


def read_tuning(study: Study) -> dict[str, str]:
    """The setting chosen per method in an earlier launch (``tuning.json``), if any."""
    path = study.out / TUNING_FILE
    if not path.is_file():
        return {}
    return {name: entry["chosen"] for name, entry in json.loads(path.read_text()).items()}


def tune(study: Study) -> None:
    """Every method's dev tries at seed 0, chosen by :func:`choose`. SFT first: the from-SFT runs start from it."""
    s = study.settings
    floor = study.floor = study.base_gap("dev")["chosen_logp"]["mean"]
    ordered = sorted(study.specs, key=lambda spec: spec.from_sft)
    for spec in ordered:
        tries = []
        trials = tuning_trials(spec, s.lrs, s.passes, s.budget)
        for trial in trials:
            run = study.train(trial, weights=False)
            dev = study.run_gap(run, "dev")
            tries.append(
                {
                    "setting": trial.setting,
                    "lr": trial.lr,
                    "passes": trial.passes,
                    "run": run.name,
                    "dev_gap": dev["gap"]["mean"],
                    "dev_accuracy": dev["accuracy"]["mean"],
                    "dev_chosen_logp": dev["chosen_logp"]["mean"],
                    "budget": vars(budget_of(study.config(trial), study.n_train)),
                }
            )
        best, study.tuning_notes[spec.name] = choose(tries, floor)
        study.chosen[spec.name] = trials[best]
        study.tries[spec.name] = tries
        write_tuning(study, floor)
        retrained = not (study.run_dir(trials[best]) / FINAL).is_dir()
        run = study.train(trials[best])  # its weights: a rerun under another rule may choose a pruned try
        if retrained:
            again = study.run_gap(run, "dev")["gap"]["mean"]
            if not math.isclose(again, tries[best]["dev_gap"], rel_tol=1e-4, abs_tol=1e-4):
                print(
                    f"note: {run.name} trained again reaches a dev gap of {again:.3f}, not {tries[best]['dev_gap']:.3f}"
                )


WEIGHTS = (FINAL, REWARD_MODEL, ADAPTER)
"""What a run holds of weights (the policy, RFT's reward model, a LoRA adapter)."""


def prune_unused(study: Study, finals: dict[str, list[Path]]) -> list[Path]:
    """Once the verdict is written: remove the weights of every run it does not rest on (tries that lost the
    choice, seeds of settings no longer chosen). A study of 40 runs of SmolLM2-135M keeps 20 GB of them otherwise;
    their configs, logs and evaluations stay, and ``pruned.json`` tells a rerun they are finished."""
    keep = {run.resolve() for runs in finals.values() for run in runs}
    pruned = []
    for run in sorted(p for p in (study.out / "runs").iterdir() if p.is_dir() and p.resolve() not in keep):
        for leftover in run.glob("*.pruning"):  # an earlier prune that was killed midway
            shutil.rmtree(leftover)
        held = [run / name for name in WEIGHTS if (run / name).is_dir()]
        if not held:
            continue
        # Renamed first, then marked, then deleted: a kill midway never leaves part of a model that counts as one.
        doomed = [path.rename(path.with_name(path.name + ".pruning")) for path in held]
        (run / PRUNED).write_text(json.dumps({"removed": [p.name for p in held]}) + "\n")
        for path in doomed:
            shutil.rmtree(path)
        pruned.append(run)
    return pruned


def choose(tries: Sequence[dict[str, Any]], floor: float) -> tuple[int, str | None]:
    """The try with the best dev gap among those whose dev preferred responses are at least as likely as under the
    base model (``floor``, the base's mean chosen log-likelihood); a note when no try keeps that likelihood.

    The gap alone rewards a model that has pushed both sides of every pair far down: on tweets, SPIN at lr 1e-3
    reached a dev gap of 65.8 (base 10.8) with the preferred texts 5x less likely than under the base (-528 against
    -99 nats) and pair accuracy at 0.57. A model that explains held-out preferred human text worse than the model
    it was trained from has moved away from that text, whatever the gap says."""
    finite = [i for i, t in enumerate(tries) if math.isfinite(t["dev_gap"])]
    kept = [i for i in finite if dev_likelihood(tries[i]) >= floor]
    if kept:
        return max(kept, key=lambda i: tries[i]["dev_gap"]), None
    if not finite:  # every try diverged: the first stands in, and the note says so
        return 0, "every try diverged (non-finite dev gap)"
    best = max(finite, key=lambda i: tries[i]["dev_gap"])
    return best, f"no try kept the base's likelihood of the dev preferred responses ({floor:.1f}); best gap chosen"


def dev_likelihood(trial: dict[str, Any]) -> float:
    value = trial.get("dev_chosen_logp", -math.inf)
    return value if math.isfinite(value) else -math.inf


TUNING_RULE = "best dev gap (nats, sum over tokens) among tries with dev chosen log-lik. >= the base's"


def write_tuning(study: Study, floor: float) -> None:
    record = {
        name: {
            "tries": tries,
            "chosen": study.chosen[name].setting,
            "metric": TUNING_RULE,
            "base_dev_chosen_logp": floor,
            "note": study.tuning_notes.get(name),
        }
        for name, tries in study.tries.items()
    }
    (study.out / TUNING_FILE).write_text(json.dumps(record, indent=2))


def train_seeds(study: Study) -> dict[str, list[Path]]:
    """Every method's chosen setting at every seed, evaluated on the test part; SFT's runs first per seed."""
    finals: dict[str, list[Path]] = {spec.name: [] for spec in study.specs}
    ordered = sorted(study.specs, key=lambda spec: spec.from_sft)
    for seed in range(study.settings.seeds):
        for spec in ordered:
            run = study.train(replace(study.chosen[spec.name], seed=seed))
            study.run_gap(run, "test")
            study.run_likeness(run)
            finals[spec.name].append(run)
        sft_run = finals["sft"][-1]
        for spec in ordered:
            study.winrate(finals[spec.name][-1], sft_run)
    return finals
