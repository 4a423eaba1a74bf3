"""Comparison report over run directories: a Markdown table, a self-contained HTML page and PNG plots.

A run directory is what ``rewardsft train`` writes; evaluation results are read from ``RUN/eval/*/summary.json``
(``rewardsft eval ... --out RUN/eval/NAME``). Each run's ``final/`` also gets a model card (README.md).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rewardsft.errors import ConfigError
from rewardsft.eval.paired import compare_runs, differences_markdown, metric_label, shown_verdict
from rewardsft.layout import CONFIG_FILE, EVAL, FINAL, REWARD_MODEL, SUMMARY_FILE
from rewardsft.model_card import model_card
from rewardsft.training.metrics import METRICS_FILE, read_metrics

# Panels of the per-run training-curve figure: title -> metric keys drawn on it (those present).
CURVE_PANELS = {
    "loss": ["train/loss", "irft/loss", "rm/loss", "eval/loss"],
    "margin": ["irft/margin", "rm/margin"],
    "reward: demonstration vs generation": ["irft/demo_reward", "irft/gen_reward", "policy/reward"],
    "reward-model accuracy": ["irft/accuracy", "rm/accuracy", "eval/rm_accuracy"],
}
TABLE_KEYS = [
    "train/loss",
    "eval/loss",
    "irft/loss",
    "irft/margin",
    "irft/accuracy",
    "rm/accuracy",
    "eval/rm_accuracy",
    "policy/reward",
    "policy/kl",
]


@dataclass
class RunSummary:
    name: str
    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    def final(self, key: str) -> float | None:
        values = [r[key] for r in self.metrics if r.get(key) is not None]
        return values[-1] if values else None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in self.metrics if r.get(key) is not None]
        return [p[0] for p in points], [p[1] for p in points]


def read_run(path: Path) -> RunSummary:
    if not (path / CONFIG_FILE).is_file():
        raise ConfigError(f"{path} is not a run directory (no {CONFIG_FILE})")
    config = yaml.safe_load((path / CONFIG_FILE).read_text())
    metrics = read_metrics(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else []
    evals = {}
    for summary in sorted((path / EVAL).glob(f"*/{SUMMARY_FILE}")):
        evals[summary.parent.name] = json.loads(summary.read_text())
    return RunSummary(path.name, path, config, metrics, evals)


def build_report(
    run_dirs: list[Path], out: Path, baseline: Path | None = None, extra: ExtraSection | None = None
) -> Path:
    """Write ``report.md``, ``report.html`` and PNGs to ``out``; model cards to each run's ``final/``.

    With a ``baseline`` run: also the paired "difference vs baseline" table (seeds of a method combined) and a
    forest plot, each row worded better / worse / not resolved from its interval alone in the metric's direction,
    marked when fewer than three seeds stand behind it (``eval/paired.py``). ``extra`` is added to both pages.
    """
    runs = [read_run(p) for p in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        for run in runs:
            run.name = f"{run.path.parent.name}/{run.path.name}"
    out.mkdir(parents=True, exist_ok=True)
    images = {f"curves-{safe(r.name)}.png": plot_curves(r, out / f"curves-{safe(r.name)}.png") for r in runs}
    images["eval-gap.png"] = plot_gap(runs, out / "eval-gap.png")
    images["win-rates.png"] = plot_win_rates(runs, out / "win-rates.png")
    differences: list[dict[str, Any]] = []
    if baseline is not None:
        differences = compare_runs(run_dirs, baseline)
        images["differences.png"] = plot_differences(differences, out / "differences.png", baseline.name)
    made = [name for name, ok in images.items() if ok] + list(extra.images if extra else ())
    section = differences_markdown(differences, baseline.name) if baseline is not None else ""
    extra_text = extra.markdown if extra else ""
    (out / "report.md").write_text(render_markdown(runs, made, section, extra_text))
    (out / "report.html").write_text(render_html(runs, out, made, differences, baseline, extra_text))
    for run in runs:
        if (run.path / FINAL).is_dir():
            (run.path / FINAL / "README.md").write_text(model_card(run.config, run.name, eval_cells(run)))
        if (run.path / REWARD_MODEL).is_dir():
            card = model_card(run.config, run.name, eval_cells(run), kind="reward_model")
            (run.path / REWARD_MODEL / "README.md").write_text(card)
    return out / "report.md"


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'rewardsft[eval]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Every report figure: tight layout, 90 dpi PNG, closed so long reports do not pile up figures."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    pyplot().close(fig)


@dataclass(frozen=True)
class ExtraSection:
    """A caller's own section (e.g. the demo's): Markdown, and PNGs it already wrote into the report folder."""

    markdown: str
    images: tuple[str, ...] = ()


def plot_curves(run: RunSummary, path: Path) -> bool:
    panels = {title: [k for k in keys if run.series(k)[0]] for title, keys in CURVE_PANELS.items()}
    panels = {title: keys for title, keys in panels.items() if keys}
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels.items(), strict=True):
        for key in keys:
            steps, values = run.series(key)
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(f"{run.name} ({run.method})")
    save_figure(fig, path)
    return True


def plot_gap(runs: list[RunSummary], path: Path) -> bool:
    bars = [
        (f"{r.name}\n{name}", s["gap"]) for r in runs for name, s in r.evals.items() if s.get("kind") == "logprob_gap"
    ]
    return _bar_plot(bars, path, "log p(chosen) − log p(rejected)", "eval: log-prob gap (95% bootstrap CI)")


def plot_win_rates(runs: list[RunSummary], path: Path) -> bool:
    bars = [
        (f"{r.name}\n{name}", s["win_rate_ties_half"])
        for r in runs
        for name, s in r.evals.items()
        if s.get("kind") == "win_rate"
    ]
    return _bar_plot(bars, path, "win rate (ties count half)", "eval: win rate vs baseline (95% bootstrap CI)")


def _bar_plot(bars: list[tuple[str, dict[str, Any]]], path: Path, ylabel: str, title: str) -> bool:
    if not bars:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(bars)), 3.4))
    means = [b[1]["mean"] for b in bars]
    errors = [
        [m - b[1]["ci95"][0] for m, b in zip(means, bars, strict=True)],
        [b[1]["ci95"][1] - m for m, b in zip(means, bars, strict=True)],
    ]
    ax.bar(range(len(bars)), means, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    save_figure(fig, path)
    return True


FOREST_METRICS = {
    "human_prob": "P(human) of the samples",
    "gap": "log-prob gap (sum)",
    "gap_mean": "log-prob gap (per token)",
    "correct": "pair accuracy",
    "win_rate": "win rate − 0.5",
}


def plot_differences(rows: list[dict[str, Any]], path: Path, baseline: str) -> bool:
    """Forest plot: one panel per evaluation metric, one row per run (group): the paired difference from the
    baseline and its 95% interval, with a line at zero."""
    panels: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["metric"] in FOREST_METRICS:
            panels.setdefault(f"{row['eval']}: {FOREST_METRICS[row['metric']]}", []).append(row)
    if not panels:
        return False
    plt = pyplot()
    height = 0.9 + 0.42 * max(len(v) for v in panels.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), height), squeeze=False)
    colours = {"better": "#2a9d4b", "worse": "#c0392b", "not resolved": "#555555"}
    for ax, (title, items) in zip(axes[0], panels.items(), strict=True):
        for y, row in enumerate(reversed(items)):
            lo, hi = row["ci95"]
            colour = colours[row["verdict"]]
            ax.plot([lo, hi], [y, y], color=colour, linewidth=2)
            ax.plot([row["mean"]], [y], "o", color=colour)
        ax.axvline(0.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_yticks(range(len(items)), [f"{r['group']}\n{shown_verdict(r)}" for r in reversed(items)], fontsize=7)
        ax.set_ylim(-0.6, len(items) - 0.4)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"difference vs {baseline} (paired, 95% bootstrap CI over examples)", fontsize=10)
    save_figure(fig, path)
    return True


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def eval_cells(run: RunSummary) -> list[str]:
    cells = []
    for name, s in run.evals.items():
        if s.get("kind") == "logprob_gap":
            cells.append(
                f"{name}: gap {fmt(s['gap']['mean'])} [{fmt(s['gap']['ci95'][0])}, "
                f"{fmt(s['gap']['ci95'][1])}], acc {fmt(s['accuracy']['mean'])}"
            )
        elif s.get("kind") == "win_rate":
            w = s["win_rate_ties_half"]
            cells.append(
                f"{name}: win {fmt(w['mean'])} [{fmt(w['ci95'][0])}, {fmt(w['ci95'][1])}] "
                f"(W/T/L {s['wins']}/{s['ties']}/{s['losses']})"
            )
        elif s.get("kind") == "harness":
            cells.append(f"{name}: avg {fmt(s['average'])} (lm-eval {s.get('lm_eval_version')})")
        elif s.get("kind") == "human_likeness":
            m, acc = s["mauve"], s["discriminator_accuracy"]
            cells.append(
                f"{name}: MAUVE {fmt(m['mean'])} (seeds {fmt(m['seed_range'][0])}..{fmt(m['seed_range'][1])}), "
                f"discriminator {fmt(acc['mean'])}"
            )
    return cells


def table_rows(runs: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in TABLE_KEYS if any(r.final(k) is not None for r in runs)]
    header = ["run", "method", "model", "steps", *keys, "evaluation"]
    rows = []
    for r in runs:
        steps = max((m.get("step", 0) for m in r.metrics), default=0)
        model = r.config.get("model", {}).get("name_or_path", "?")
        rows.append(
            [
                r.name,
                r.method,
                str(model),
                str(steps),
                *[fmt(r.final(k)) for k in keys],
                "; ".join(eval_cells(r)) or "–",
            ]
        )
    return header, rows


def render_markdown(runs: list[RunSummary], images: list[str], differences: str = "", extra: str = "") -> str:
    header, rows = table_rows(runs)
    lines = [
        "# rewardsft report",
        "",
        f"{len(runs)} run(s). Final value of each metric; evaluations with 95% bootstrap intervals.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    if differences:
        lines += ["", "## Difference vs baseline", "", differences.rstrip()]
    if extra:
        lines += ["", extra.rstrip()]
    lines += ["", *[f"![{name}]({name})" for name in images], ""]
    return "\n".join(lines)


def render_html(
    runs: list[RunSummary],
    out: Path,
    images: list[str],
    differences: list[dict[str, Any]] | None = None,
    baseline: Path | None = None,
    extra: str = "",
) -> str:
    """One file with the PNGs inlined as data URIs: it opens with no network and no sibling files."""
    header, rows = table_rows(runs)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    sections = differences_html(differences, baseline.name) if differences and baseline is not None else ""
    if extra:
        sections += f"<pre>{html.escape(extra)}</pre>"
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode((out / name).read_bytes()).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name in images
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #bbb;"
        "padding:4px 8px;font-size:13px}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>rewardsft report</title><style>{style}"
        f"</style></head><body><h1>rewardsft report</h1><table><tr>{head}</tr>{body}</table>{sections}{figures}"
        "</body></html>"
    )


def differences_html(rows: list[dict[str, Any]], baseline: str) -> str:
    header = ["run", "eval", "metric", "difference", "95% CI", "verdict", "+/0/−", "sign p", "permutation p", "seeds"]
    cells = [
        [
            r["group"],
            r["eval"],
            metric_label(r),
            f"{r['mean']:+.4g}",
            f"[{r['ci95'][0]:+.4g}, {r['ci95'][1]:+.4g}]",
            shown_verdict(r),
            f"{r['positive']}/{r['zero']}/{r['negative']}",
            f"{r['sign_p']:.3g}",
            f"{r['permutation_p']:.3g}",
            str(r["seeds"]),
        ]
        for r in rows
    ]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f"<h2>Difference vs {html.escape(baseline)} (paired)</h2><table><tr>{head}</tr>{body}</table>"
