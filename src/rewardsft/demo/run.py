"""``rewardsft demo``: SFT, SPIN, IRFT and RFT from one mediocre base model on a task with a true reward.

1. A tiny Llama is pre-trained on a mixture of correct reversals and systematic copies (the habit), so its own
   samples carry the habitual mistake (``demo/task.py``).
2. From that base and the same correct demonstrations, each method trains at a matched budget (two passes over
   the demonstrations), over several seeds.
3. Held-out prompts are judged by the true reward: greedy and sampled accuracy, the habit's share, win rate
   against SFT, and the log-prob gap between the correct and the habitual answer (no method sees the latter).
4. Every claim is a paired difference against SFT with its interval (``eval/paired.py``); the robustness sweep
   replaces a share of the demonstrations with habitual answers for SFT and IRFT.

The settings were chosen on the ``dev`` prompts (docs/LOG.md), never on the ``test`` prompts reported here.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from rewardsft.config import GenerationConfig, load_config
from rewardsft.demo.evaluate import ACCURACY_METRICS, task_accuracy
from rewardsft.demo.task import TaskData, TaskSizes, write_task
from rewardsft.errors import ConfigError
from rewardsft.eval.logprob_gap import logprob_gap
from rewardsft.eval.paired import compare_runs, shown_verdict
from rewardsft.eval.report import ExtraSection, build_report, pyplot, save_figure
from rewardsft.eval.win_rate import WinRateSettings, win_rate
from rewardsft.layout import CONFIG_FILE, EVAL, FINAL, GENERATIONS_FILE, METRICS_FILE, STAGES
from rewardsft.recipes import run_recipe
from rewardsft.tiny import tiny_model, train_tokenizer
from rewardsft.training.metrics import read_metrics

JUDGE = "rewardsft.demo.task:true_reward"
COMMON = [
    "data.max_length=48",
    "data.max_prompt_length=24",
    "train.batch_size=16",
    "train.save_every=100000",
    "train.log_every=1",
    "logging.progress=false",
]
GENERATION = ["generation.max_new_tokens=12", "generation.batch_size=64"]
# Chosen on the dev prompts (docs/LOG.md): adamw at 1e-3 for every method, two passes over the demonstrations.
METHODS: dict[str, tuple[str, list[str]]] = {
    "sft": ("sft", ["train.epochs=2", "optim.lr=1e-3"]),
    "spin": ("irft", ["train.epochs=2", "irft.stages=1", "optim.name=adamw", "optim.lr=1e-3", *GENERATION]),
    "irft": ("irft", ["train.epochs=2", "irft.stages=4", "optim.name=adamw", "optim.lr=1e-3", *GENERATION]),
    "rft": (
        "rft",
        ["rft.iterations=10", "optim.lr=1e-3", "reward_model.lr=1e-3", "generation.max_new_tokens=12"],
    ),
}
LABELS = {"sft": "SFT", "spin": "SPIN (IRFT T=1)", "irft": "IRFT (T=4)", "rft": "RFT"}
FROM_SFT = {
    name: ["train.epochs=1", f"irft.stages={stages}", "optim.name=adamw", "optim.lr=1e-3", *GENERATION]
    for name, stages in (("spin-from-sft", 1), ("irft-t2-from-sft", 2), ("irft-t4-from-sft", 4))
}
"""SPIN and IRFT T=2 and T=4 from the SFT model for one further pass, at the main runs' optimiser settings (the
paper's protocol; IRFT T=4 from SFT is what the real-data study recommends)."""
PROTOCOL_LABELS = {
    "spin-from-sft": "SFT → SPIN",
    "irft-t2-from-sft": "SFT → IRFT (T=2)",
    "irft-t4-from-sft": "SFT → IRFT (T=4)",
}
Runs = dict[str, list[Path]]
"""Run folders by the demo's method name (``sft``, ``spin``, ...), seeds in order."""


@dataclass(frozen=True)
class DemoSettings:
    sizes: TaskSizes = field(default_factory=TaskSizes)
    pretrain_epochs: int = 30
    seeds: tuple[int, ...] = (1, 2, 3)
    noise: tuple[float, ...] = (0.0, 0.25, 0.5)
    seed: int = 0
    """Seed of the task data and the base model; each method's seeds are ``seeds``."""
    model: str | None = None
    """A local HF model to use as the base instead of pre-training the tiny one (e.g. SmolLM2-135M-Instruct)."""


# With a real model: no pre-training (the model is the base), fewer prompts, one seed, no sweep (2 CPU cores).
REAL = DemoSettings(sizes=TaskSizes(pretrain=0, demonstrations=64, dev=0, test=64), seeds=(1,), noise=(0.0,))
QUICK = DemoSettings(
    sizes=TaskSizes(pretrain=1500, demonstrations=100, dev=50, test=100),
    pretrain_epochs=20,
    seeds=(1, 2),
    noise=(0.0, 0.5),
)


def run_demo(output_dir: Path, overwrite: bool = False, settings: DemoSettings | None = None) -> Path:
    """Build the task and the base, train every method over the seeds, evaluate, sweep noise, report."""
    from transformers.utils import logging as hf_logging

    settings = settings or DemoSettings()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{output_dir} is not empty; pass --overwrite to replace it")
        shutil.rmtree(output_dir)
    # Tiny tensors: one thread is ~10x faster than two fighting over them (and leaves a core free).
    threads = torch.get_num_threads()
    torch.set_num_threads(threads if settings.model else 1)
    try:
        return _run(output_dir, settings)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, settings: DemoSettings) -> Path:
    start = time.time()
    data = write_task(out / "data", settings.sizes, settings.seed)
    if settings.model:
        print(f"[1/5] base model: {settings.model} (no pre-training; its own habits, if any)")
        base = Path(settings.model)
    else:
        print(
            f"[1/5] base model: pre-training on {settings.sizes.pretrain} prompts, "
            f"{settings.sizes.habit_share:.0%} of them answered with the habitual copy"
        )
        base = make_base(out, data, settings)
    base_eval = task_accuracy(
        str(base), data.test, out / "base-eval" / "accuracy", seed=settings.seed, render=base_render(settings)
    )
    print(
        f"  base: greedy accuracy {base_eval['greedy_correct']:.3f}, sampled {base_eval['sample_correct']:.3f}, "
        f"habit share {base_eval['sample_habit']:.3f}  ({time.time() - start:.0f}s)"
    )
    runs = out / "runs"
    print(f"[2/5] SFT, SPIN, IRFT, RFT from the base over seeds {list(settings.seeds)}")
    by_method = train_all(runs, base, data.demonstrations, data, settings, list(METHODS), start)
    main_runs = [run for method_runs in by_method.values() for run in method_runs]  # SFT's first
    print("[3/5] robustness: a share of the demonstrations replaced by the habitual answer (SFT and IRFT)")
    sweep = noise_sweep(out, base, settings, by_method, start)
    print("[4/5] paired comparisons against SFT on the held-out prompts")
    rows = compare_runs(main_runs, main_runs[0])
    verdicts = verdict_table(rows)
    print(verdicts)
    print("  the paper's protocol: SPIN and IRFT T=2/T=4 from each SFT model against SFT continued for the same budget")
    protocol = protocol_verdicts(train_protocol(runs, base, data, settings, start), by_method["sft"])
    print(protocol)
    print("[5/5] report")
    section = demo_section(out / "report", by_method, base_eval, sweep, verdicts, settings, protocol)
    report = build_report(main_runs, out / "report", baseline=main_runs[0], extra=section)
    print(f"demo done in {time.time() - start:.0f}s: {report} (and report.html beside it)")
    return report


def make_base(out: Path, data: TaskData, settings: DemoSettings) -> Path:
    """A tiny Llama trained (with our own SFT recipe) on the mixture of correct and habitual answers."""
    init = out / "base-init"
    tokenizer = train_tokenizer(data.tokenizer_corpus, vocab_size=270, add_bos=True, chat_template=None)
    model = tiny_model(tokenizer, hidden_size=64, layers=2, seed=settings.seed)
    model.save_pretrained(str(init))
    tokenizer.save_pretrained(str(init))
    config = load_config(
        "sft",
        overrides=[
            f"model.name_or_path={init}",
            f"data.path={data.pretrain}",
            f"output_dir={out / 'base'}",
            f"train.epochs={settings.pretrain_epochs}",
            "optim.lr=3e-3",
            f"seed={settings.seed}",
            *COMMON,
            "train.batch_size=32",
            "train.log_every=100",
        ],
    )
    return run_recipe(config)


def base_render(settings: DemoSettings) -> dict[str, Any]:
    """Rendering flags for the base when it is not a run (a real model): the task's text prompts as one user
    turn, as the runs trained on them. The tiny base is a run and renders as it trained."""
    if not settings.model:
        return {}
    return {"text_prompts": "user_turn", "max_length": 96, "max_prompt_length": 64}


def run_overrides(settings: DemoSettings) -> list[str]:
    render = base_render(settings)
    if not render:
        return list(COMMON)
    extra = [f"data.max_length={render['max_length']}", f"data.max_prompt_length={render['max_prompt_length']}"]
    return [*COMMON, *extra, f"data.text_prompts={render['text_prompts']}"]


def real_model_overrides(settings: DemoSettings, method: str) -> list[str]:
    """A pretrained 135M model takes a learning rate 10x below the tiny model's (at 1e-3 SFT destroyed
    SmolLM2-135M: 0 accuracy), and more passes over its 64 demonstrations. Not tuned further (docs/LOG.md)."""
    if not settings.model:
        return []
    passes = ["rft.iterations=20"] if method == "rft" else ["train.epochs=4"]
    reward = ["reward_model.lr=1e-4"] if method == "rft" else []
    return ["optim.lr=1e-4", *passes, *reward]


def train_all(
    runs: Path, base: Path, demos: Path, data: TaskData, settings: DemoSettings, methods: list[str], start: float
) -> Runs:
    """Every method for every seed, each evaluated on the test prompts; SFT of the same seed is the win-rate
    baseline. Returns the run folders by method, in the order of ``methods`` (SFT first)."""
    out: Runs = {name: [] for name in methods}
    for seed in settings.seeds:
        for name in methods:
            method, args = METHODS[name]
            if name == "rft":
                args = [*args, f"rft.prompts_per_iteration={max(2 * count_rows(demos) // 10, 2)}"]
            run = runs / f"{name}-s{seed}"
            run_recipe(
                load_config(
                    method,
                    overrides=[
                        f"model.name_or_path={base}",
                        f"data.path={demos}",
                        f"output_dir={run}",
                        f"seed={seed}",
                        *run_overrides(settings),
                        *args,
                        *real_model_overrides(settings, method),
                    ],
                )
            )
            evaluate_run(run, base, runs / f"sft-s{seed}", data, seed)
            out[name].append(run)
            print(f"  {name}-s{seed}: {summary_line(run)}  ({time.time() - start:.0f}s)")
    return out


def evaluate_run(run: Path, base: Path, sft: Path, data: TaskData, seed: int) -> None:
    model = str(run / FINAL)
    task_accuracy(model, data.test, run / EVAL / "accuracy", seed=seed)
    logprob_gap(model, str(data.test_pairs), run / EVAL / "gap", ref_model=str(base))
    sampled = GenerationConfig(max_new_tokens=16)
    win_rate(
        model, str(sft / FINAL), str(data.test), JUDGE, run / EVAL / "winrate", sampled, WinRateSettings(seed=seed)
    )


def train_protocol(runs: Path, base: Path, data: TaskData, settings: DemoSettings, start: float) -> Protocol:
    """Per seed: SPIN and IRFT T=2 from that seed's SFT model, and SFT continued from it for exactly the
    demonstrations and steps each spends (``studies.plan.matched_control``; one control per distinct budget), all
    evaluated like the main runs."""
    from rewardsft.studies.plan import budget_of, control_spec, matched_control, parse_method

    protocol = Protocol({name: [] for name in FROM_SFT}, {name: [] for name in FROM_SFT}, {})
    n = count_rows(data.demonstrations)
    for seed in settings.seeds:
        sft = runs / f"sft-s{seed}"
        common = [f"model.name_or_path={sft / FINAL}", f"data.path={data.demonstrations}", f"seed={seed}"]
        common += run_overrides(settings)
        for name, overrides in FROM_SFT.items():
            # A real model keeps its own learning rate and passes (real_model_overrides), as its main runs do.
            method_settings = [*overrides, *real_model_overrides(settings, "irft")]
            config = load_config(
                "irft", overrides=[*common, *method_settings, f"output_dir={runs / f'{name}-s{seed}'}"]
            )
            target = budget_of(config, n)
            shape = matched_control(target, n, config.train.batch_size)
            control = control_spec(parse_method(name), shape)
            # Named by its shape and lr: a second method of the same budget and lr shares it, no other run does.
            continued = runs / f"{control.name}-lr{config.optim.lr:g}-s{seed}"
            protocol.control_labels[name] = f"SFT continued ({shape.max_steps} steps of {shape.batch_size})"
            control_config = load_config(
                "sft", overrides=[*common, f"optim.lr={config.optim.lr}", *control.overrides, f"output_dir={continued}"]
            )
            for label, run_config in ((name, config), (control.name, control_config)):
                run = Path(run_config.output_dir)
                if not (run / FINAL).is_dir():  # two methods of one budget share their control
                    run_recipe(run_config)
                    evaluate_run(run, base, sft, data, seed)
                    print(f"  {label}-s{seed}: {summary_line(run)}  ({time.time() - start:.0f}s; budget {target})")
            protocol.runs[name].append(Path(config.output_dir))
            protocol.controls[name].append(continued)
    return protocol


@dataclass(frozen=True)
class Protocol:
    """The paper's protocol in the demo: each from-SFT method's runs and its budget-matched controls, by seed."""

    runs: Runs
    controls: Runs
    control_labels: dict[str, str]
    """Each method's control as the tables name it (by its shape: two methods of one budget share one)."""


def protocol_verdicts(protocol: Protocol, sft_runs: list[Path]) -> str:
    """Each from-SFT method against SFT continued for its budget (the fair comparison), then every arm against
    SFT (what the extra pass buys)."""
    from rewardsft.eval.paired import Group, compare_groups

    sft = Group("SFT", sft_runs)
    rows, against_sft = [], []
    for name, label in PROTOCOL_LABELS.items():
        method = Group(label, protocol.runs[name])
        control = Group(protocol.control_labels[name], protocol.controls[name])
        rows += compare_groups([method], control, "accuracy")
        against_sft += compare_groups([method, control], sft, "accuracy")
    unique = {(row["group"], row["metric"]): row for row in against_sft}  # one control may serve two methods
    for row in unique.values():
        row["group"] = f"{row['group']} vs SFT"
    return verdict_table([*rows, *unique.values()]).replace("difference vs SFT", "difference")


def summary_line(run: Path) -> str:
    acc = json.loads((run / EVAL / "accuracy" / "summary.json").read_text())
    gap = json.loads((run / EVAL / "gap" / "summary.json").read_text())
    return (
        f"greedy {acc['greedy_correct']:.3f} sampled {acc['sample_correct']:.3f} habit {acc['sample_habit']:.3f} "
        f"gap {gap['gap']['mean']:+.2f}"
    )


def count_rows(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def noise_sweep(out: Path, base: Path, settings: DemoSettings, main_runs: Runs, start: float) -> dict[str, Any]:
    """Sampled accuracy of SFT and IRFT (mean and sd over seeds) at each noise level."""
    result: dict[str, Any] = {}
    for noise in settings.noise:
        if noise == 0.0:
            runs = main_runs
        else:
            data = write_task(out / f"data-noise-{noise}", settings.sizes, settings.seed, noise=noise)
            runs = train_all(out / f"noise-{noise}", base, data.demonstrations, data, settings, ["sft", "irft"], start)
        for method in ("sft", "irft"):
            values = [accuracy(r)["sample_correct"] for r in runs[method]]
            result.setdefault(method, []).append((noise, mean(values), sd(values)))
    return result


def accuracy(run: Path) -> dict[str, Any]:
    return json.loads((run / EVAL / "accuracy" / "summary.json").read_text())  # type: ignore[no-any-return]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def sd(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds (0 for a single seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


METRIC_WORDS = {
    "greedy_correct": "greedy accuracy",
    "sample_correct": "sampled accuracy",
    "sample_habit": "habit share (lower is better)",
    "gap": "log-prob gap correct − habit",
    "win_rate": "win rate vs SFT − 0.5",
}


def verdict_table(rows: list[dict[str, Any]]) -> str:
    """Each method against SFT: the paired difference, its interval and the verdict the interval allows.

    The verdict is the comparison row's own (``eval/paired.py`` knows the habit share is lower-is-better and
    marks verdicts from fewer than three seeds), so this table and the report's never disagree.
    """
    lines = ["| method | measure | difference vs SFT | 95% CI | verdict |", "|---|---|---|---|---|"]
    for row in rows:
        if row["metric"] not in METRIC_WORDS:
            continue
        lo, hi = row["ci95"]
        lines.append(
            f"| {row['group']} | {METRIC_WORDS[row['metric']]} | {row['mean']:+.3f} | [{lo:+.3f}, {hi:+.3f}] "
            f"| {shown_verdict(row)} |"
        )
    return "\n".join(lines)


def budgets(run: Path) -> dict[str, float]:
    """What a run consumed: demonstrations seen, tokens it generated, response tokens through a backward pass."""
    config = yaml.safe_load((run / CONFIG_FILE).read_text())
    records = read_metrics(run / METRICS_FILE)
    trained = sum(r.get("train/tokens", 0.0) for r in records)  # log_every=1: every step is logged
    rows = count_rows(Path(config["data"]["path"]))
    if config["method"] == "rft":
        per_round = config["rft"]["prompts_per_iteration"] * config["rft"]["samples_per_prompt"]
        generated = sum(r["gen/mean_length"] * per_round for r in records if "gen/mean_length" in r)
        demos = config["rft"]["prompts_per_iteration"] * config["rft"]["iterations"]
        return {"demonstrations": demos, "generated_tokens": generated, "trained_tokens": trained}
    generated = sum(
        len(json.loads(line)["response_ids"])
        for path in (run / STAGES).glob(f"stage-*/{GENERATIONS_FILE}")
        for line in path.read_text().splitlines()
        if line.strip()
    )
    epochs = config["train"]["epochs"] * (config["irft"]["epochs_per_stage"] if config["method"] == "irft" else 1)
    return {"demonstrations": rows * epochs, "generated_tokens": generated, "trained_tokens": trained}


def demo_section(
    folder: Path,
    by_method: Runs,
    base_eval: dict[str, Any],
    sweep: dict[str, Any],
    verdicts: str,
    settings: DemoSettings,
    protocol: str = "",
) -> ExtraSection:
    """The demo's own table (per method: accuracy over seeds and budgets), verdicts and plots for the report."""
    folder.mkdir(parents=True, exist_ok=True)
    by_method = {method: runs for method, runs in by_method.items() if runs}
    lines = [
        "## The demo: reversal task, habitual copy",
        "",
        f"Seeds {list(settings.seeds)}; held-out test prompts: {settings.sizes.test}; demonstrations: "
        f"{settings.sizes.demonstrations}. Base model: greedy accuracy {base_eval['greedy_correct']:.3f}, sampled "
        f"{base_eval['sample_correct']:.3f}, habit share {base_eval['sample_habit']:.3f}.",
        "",
        "| method | greedy accuracy | sampled accuracy | habit share | demonstrations seen | generated tokens | "
        "trained response tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, method_runs in by_method.items():
        cells = []
        for metric in ACCURACY_METRICS:
            values = [accuracy(r)[metric] for r in method_runs]
            cells.append(f"{mean(values):.3f} ± {sd(values):.3f}")
        spent = budgets(method_runs[0])
        cells += [f"{spent[key]:.0f}" for key in ("demonstrations", "generated_tokens", "trained_tokens")]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sd over seeds. Verdicts from paired intervals (prompts resampled, seeds averaged):", ""]
    lines.append(verdicts)
    if protocol:
        lines += [
            "",
            "### The paper's protocol: SPIN and IRFT T=2/T=4 from the SFT model, against SFT continued for the same budget",
            "",
            "Each seed's SFT model trained one pass further, by SPIN, by IRFT T=2 or T=4, or by SFT with the batch size and "
            "steps that see exactly the same demonstrations as each (first rows: each method against its SFT "
            "continued; then every arm against SFT itself):",
            "",
            protocol,
        ]
    images = tuple(name for name in (plot_accuracy(by_method, folder), plot_sweep(sweep, folder)) if name)
    return ExtraSection("\n".join(lines), images)


def plot_accuracy(by_method: dict[str, list[Path]], folder: Path) -> str | None:
    fig, ax = pyplot().subplots(figsize=(6.4, 3.4))
    width = 0.27
    for k, metric in enumerate(ACCURACY_METRICS):
        means = [mean([accuracy(r)[metric] for r in runs]) for runs in by_method.values()]
        sds = [sd([accuracy(r)[metric] for r in runs]) for runs in by_method.values()]
        xs = [i + (k - 1) * width for i in range(len(by_method))]
        ax.bar(xs, means, width, yerr=sds, capsize=3, label=METRIC_WORDS[metric])
    ax.set_xticks(range(len(by_method)), [LABELS[m] for m in by_method], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("held-out test prompts (mean ± sd over seeds)")
    ax.legend(fontsize=7)
    save_figure(fig, folder / "demo-accuracy.png")
    return "demo-accuracy.png"


def plot_sweep(sweep: dict[str, Any], folder: Path) -> str | None:
    if not sweep:
        return None
    fig, ax = pyplot().subplots(figsize=(4.8, 3.4))
    for method, points in sweep.items():
        xs, ms, ss = zip(*points, strict=True)
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=LABELS[method])
    ax.set_xlabel("share of demonstrations replaced by the habitual copy")
    ax.set_ylabel("sampled accuracy")
    ax.set_title("robustness to low-quality demonstrations")
    ax.legend(fontsize=8)
    save_figure(fig, folder / "demo-robustness.png")
    return "demo-robustness.png"


def demo_settings(
    quick: bool = False,
    seeds: int | None = None,
    noise: Sequence[float] | None = None,
    seed: int = 0,
    model: str | None = None,
) -> DemoSettings:
    """The default demo, its CI-sized ``quick`` form, or the real-model form (``model``), with overrides."""
    if model is not None and not Path(model).is_dir():
        raise ConfigError(f"--model {model}: not a local model folder (see OFFLINE.md for SmolLM2-135M-Instruct)")
    out = replace(REAL if model else QUICK if quick else DemoSettings(), seed=seed, model=model)
    if seeds is not None:
        out = replace(out, seeds=tuple(range(1, seeds + 1)))
    if noise is not None:
        out = replace(out, noise=tuple(sorted({0.0, *noise})))
    return out
