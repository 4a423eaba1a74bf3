"""Stage 3 of the real-data study: tables, plots and the paired report from the finished runs.

Per domain: the judges' agreement with held-out human ratings; one row per method (seeds combined) with the
held-out log-prob gap and pair accuracy, their paired difference from SFT (``rewardsft.eval.paired``), win rates
against SFT's samples under both judges, sample health and cost; the same for the sweep; a plot of the sweep;
and ``rewardsft report --baseline`` over every run. Writes ``results.json`` and ``results.md`` in the study folder.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.study_judges import win_rate_ci
from rewardsft.eval.paired import compare_runs, paired_difference, read_per_example
from rewardsft.eval.report import build_report, pyplot, save_figure
from rewardsft.studies.runner import WALL_TIME, launches

JUDGES = ("minilm", "vader")
SEED = re.compile(r"-s(\d+)$")
MAIN_ORDER = ("sft", "spin", "irft-t2", "irft-t4", "rft")


def groups_of(domain_dir: Path) -> dict[str, list[Path]]:
    """Finished runs (with ``final/`` and a gap evaluation) grouped by name without the ``-sN`` seed suffix."""
    groups: dict[str, list[Path]] = {}
    runs_dir = domain_dir / "runs"
    for run in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if (run / "final").is_dir() and (run / "eval" / "samples" / "health.json").is_file():
            groups.setdefault(SEED.sub("", run.name), []).append(run)
    # The main methods in the paper's order, then the sweep's variants.
    order = {name: i for i, name in enumerate(MAIN_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def seed_of(run: Path) -> int:
    match = SEED.search(run.name)
    return int(match.group(1)) if match else 0


def read_samples(folder: Path) -> list[dict[str, Any]]:
    path = folder / "eval" / "samples" / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gap_summary(folders: Sequence[Path]) -> dict[str, float]:
    """Seed means of the unpaired figures ``eval gap`` writes."""
    summaries = [json.loads((f / "eval" / "gap" / "summary.json").read_text()) for f in folders]
    return {k: statistics.fmean(s[k]["mean"] for s in summaries) for k in ("gap", "gap_mean", "accuracy")}


def paired_vs_sft(group: list[Path], sft: list[Path]) -> dict[str, dict[str, Any]]:
    """Paired differences of the gap evaluation from SFT's (seeds of each side averaged per pair)."""
    if group == sft:
        return {}
    rows = compare_runs([*group, *sft], sft[0], ["gap"])
    # The seeds of one method must form one group (configs equal but for the seed), or the rows are per seed.
    ours = [r for r in rows if set(r["runs"]) == {str(p) for p in group}]
    if len(ours) != len({r["metric"] for r in rows}):
        raise SystemExit(f"{[p.name for p in group]} do not group as seeds of one method (their configs differ)")
    return {r["metric"]: {"mean": r["mean"], "ci95": r["ci95"], "verdict": r["verdict"]} for r in ours}


def base_vs_sft(base: Path, sft: list[Path]) -> dict[str, dict[str, Any]]:
    """The base model (not a run) against SFT's seed-averaged per-pair values."""
    base_eval = read_per_example(base / "eval" / "gap")
    sft_evals = [read_per_example(r / "eval" / "gap") for r in sft]
    out = {}
    for metric in ("gap", "gap_mean", "correct"):
        reference = [statistics.fmean(v) for v in zip(*(e.columns[metric] for e in sft_evals), strict=True)]
        diff = paired_difference(base_eval.columns[metric], reference, metric, 2000, 0)
        out[metric] = {"mean": diff.mean, "ci95": list(diff.ci95), "verdict": diff.verdict}
    return out


def win_rates(group: list[Path], sft: list[Path]) -> dict[str, dict[str, Any]]:
    """Win rate of the group's samples against SFT's of the same seed, seeds averaged."""
    by_seed = {seed_of(r): read_samples(r) for r in sft}
    out = {}
    for judge in JUDGES:
        pairs = [
            ([s[judge] for s in read_samples(run)], [s[judge] for s in by_seed[seed_of(run)]])
            for run in group
            if seed_of(run) in by_seed
        ]
        point, ci = win_rate_ci(pairs)
        out[judge] = {"win_rate": point, "ci95": list(ci)}
    return out


def base_win_rates(base: Path, sft: list[Path]) -> dict[str, dict[str, Any]]:
    """Win rate of the seedless base's one set of samples against SFT's seeds pooled.

    Pairing the base with each seed in turn would resample the same base samples once per seed, as if they were
    independent sets, and narrow the interval by about the square root of the number of seeds.
    """
    ours, theirs = read_samples(base), [s for r in sft for s in read_samples(r)]
    out = {}
    for judge in JUDGES:
        point, ci = win_rate_ci([([s[judge] for s in ours], [s[judge] for s in theirs])])
        out[judge] = {"win_rate": point, "ci95": list(ci)}
    return out


def health(folders: Sequence[Path]) -> dict[str, Any]:
    healths = [json.loads((f / "eval" / "samples" / "health.json").read_text()) for f in folders]
    keys = ("mean_tokens", "identical_to_demo", "distinct_1", "distinct_2", "empty", "truncated")
    out: dict[str, Any] = {k: statistics.fmean(h[k] for h in healths) for k in keys}
    out["judge_means"] = {j: statistics.fmean(s[j] for f in folders for s in read_samples(f)) for j in JUDGES}
    return out


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def cost(run: Path) -> dict[str, float]:
    """Demonstrations seen, generated tokens, training tokens and wall time of one run."""
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    metrics = read_metrics(run)
    generated = 0.0
    if config["method"] == "irft":
        for stats in sorted((run / "stages").glob("*/stats.json")):
            count = len((stats.parent / "generations.jsonl").read_text().splitlines())
            generated += json.loads(stats.read_text())["gen/mean_length"] * count
    elif config["method"] == "rft":
        per_round = config["rft"]["prompts_per_iteration"] * config["rft"]["samples_per_prompt"]
        generated = sum(m["gen/mean_length"] * per_round for m in metrics if "gen/mean_length" in m)
    return {
        "demonstrations_seen": demonstrations_seen(config),
        "generated_tokens": generated,
        "train_tokens": sum(m.get("train/tokens", 0.0) for m in metrics),
        "wall_s": sum(launch["seconds"] for launch in launches(run / WALL_TIME)),
    }


def demonstrations_seen(config: dict[str, Any]) -> int:
    """Demonstrations through a training pass, repeats counted: SFT ``n × train.epochs``; IRFT ``n × train.epochs ×
    irft.epochs_per_stage`` (each stage covers its chunk that many times: ``recipes/irft.py`` ``plan_stages``);
    RFT one per prompt slot and reward step, ``rft.iterations × rft.prompts_per_iteration × rft.reward_steps``
    (the k samples of a prompt all pair with its one demonstration). ``n`` is ``data.max_rows``, which the study
    always sets."""
    if config["method"] == "rft":
        rc = config["rft"]
        return int(rc["iterations"] * rc["prompts_per_iteration"] * rc.get("reward_steps", 1))
    passes = config["train"]["epochs"]
    if config["method"] == "irft":
        passes *= config["irft"].get("epochs_per_stage", 1)
    return int(config["data"]["max_rows"] * passes)


def mean_cost(costs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.fmean(c[k] for c in costs) for k in costs[0]}


def signals(run: Path) -> dict[str, float]:
    """The logged metrics a guard rail can read: final margin/accuracy/loss, truncation share, reward accuracy."""
    last = {k: v for m in read_metrics(run) for k, v in m.items()}
    keep = ("irft/margin", "irft/accuracy", "irft/loss", "gen/max_tokens_share", "rm/accuracy", "policy/kl")
    return {k: last[k] for k in keep if k in last}


def domain_results(domain_dir: Path) -> dict[str, Any]:
    groups = groups_of(domain_dir)
    if "sft" not in groups:
        return {"note": "no finished SFT run yet"}
    sft = groups["sft"]
    base = domain_dir / "base"
    rows = {"base": base_row(base, sft)}
    for name, runs in groups.items():
        rows[name] = {
            "seeds": len(runs),
            **gap_summary(runs),
            "vs_sft": paired_vs_sft(runs, sft),
            "win_vs_sft": win_rates(runs, sft) if name != "sft" else {},
            "health": health(runs),
            "cost": mean_cost([cost(r) for r in runs]),
            "signals": {r.name: signals(r) for r in runs},
        }
    judges = json.loads((domain_dir / "judges.json").read_text())
    return {"judges": judges, "rows": rows}


def base_row(base: Path, sft: list[Path]) -> dict[str, Any]:
    return {
        "seeds": 0,
        **gap_summary([base]),
        "vs_sft": base_vs_sft(base, sft),
        "win_vs_sft": base_win_rates(base, sft),
        "health": health([base]),
    }


def summarize(out: Path, budget: Any) -> Path:
    """``results.json`` and ``results.md`` for every domain studied, the sweep plot, and the paired reports."""
    results = {d: domain_results(out / d) for d in budget.domains if (out / d).is_dir()}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    parts = ["# Real-data study: results (generated by `python -m benchmarks.real_study summarize`)", ""]
    for domain, result in results.items():
        parts += domain_markdown(domain, result)
        groups = groups_of(out / domain)
        if "sft" in groups:
            runs = [r for g in groups.values() for r in g]
            build_report(runs, out / domain / "report", baseline=groups["sft"][0])
        if plot_runs(domain, result, out / f"{domain}_methods.png"):
            parts += [f"![{domain}: differences from SFT]({domain}_methods.png)", ""]
    (out / "results.md").write_text("\n".join(parts) + "\n")
    return out / "results.md"


def fmt_ci(entry: dict[str, Any] | None, key: str = "mean", digits: int = 2) -> str:
    """``+1.23 [+0.10, +2.40] better`` for a difference; ``0.61 [0.52, 0.70]`` for a win rate."""
    if not entry:
        return "—"
    lo, hi = entry["ci95"]
    sign = "+" if key == "mean" else ""
    verdict = f" {entry['verdict']}" if "verdict" in entry else ""
    return f"{entry[key]:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]{verdict}"


def domain_markdown(domain: str, result: dict[str, Any]) -> list[str]:
    if "rows" not in result:
        return [f"## {domain}", "", result.get("note", ""), ""]
    judges = result["judges"]
    lines = [
        f"## {domain}",
        "",
        f"Judges on {judges['minilm']['n']} held-out human-rated snippets (fitted on {judges['fit_rows']}):",
        "",
        "| judge | Pearson | Spearman | pair accuracy (≥2 vs ≤−2) |",
        "|---|---|---|---|",
        *(
            f"| {j} | {judges[j]['pearson']:.3f} | {judges[j]['spearman']:.3f} | {judges[j]['pair_accuracy']:.3f} |"
            for j in JUDGES
        ),
        "",
        "| model | seeds | gap | gap/token | pair acc. | Δgap vs SFT | Δgap/token vs SFT | Δacc. vs SFT | "
        "win vs SFT (MiniLM) | win vs SFT (VADER) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        vs, win = row["vs_sft"], row["win_vs_sft"]
        lines.append(
            f"| {name} | {row['seeds']} | {row['gap']:.2f} | {row['gap_mean']:.3f} | {row['accuracy']:.3f} | "
            f"{fmt_ci(vs.get('gap'))} | {fmt_ci(vs.get('gap_mean'), digits=3)} | "
            f"{fmt_ci(vs.get('correct'), digits=3)} | {fmt_ci(win.get('minilm'), 'win_rate')} | "
            f"{fmt_ci(win.get('vader'), 'win_rate')} |"
        )
    lines += ["", *health_table(result["rows"]), ""]
    return lines


def health_table(rows: dict[str, Any]) -> list[str]:
    lines = [
        "| model | mean tokens | identical to a demo | distinct-1 | distinct-2 | empty | truncated | MiniLM mean | "
        "VADER mean | demos seen | generated tokens | training tokens | wall (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        h, c = row["health"], row.get("cost")
        costs = (
            f"{c['demonstrations_seen']:.0f} | {c['generated_tokens']:.0f} | {c['train_tokens']:.0f} | "
            f"{c['wall_s'] / 60:.1f}"
            if c
            else "— | — | — | —"
        )
        lines.append(
            f"| {name} | {h['mean_tokens']:.1f} | {h['identical_to_demo']:.2f} | {h['distinct_1']:.2f} | "
            f"{h['distinct_2']:.2f} | {h['empty']:.2f} | {h['truncated']:.2f} | {h['judge_means']['minilm']:.2f} | "
            f"{h['judge_means']['vader']:.2f} | {costs} |"
        )
    return lines


def plot_runs(domain: str, result: dict[str, Any], path: Path) -> bool:
    """Forest plot: paired Δgap/token vs SFT and MiniLM win rate − 0.5 vs SFT, one row per model."""
    rows = {n: r for n, r in result.get("rows", {}).items() if n != "sft" and r["vs_sft"]}
    if not rows:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.4 * len(rows) + 1.5), sharey=True)
    names = list(rows)
    panels = (
        ("Δ gap per token vs SFT", lambda r: (r["vs_sft"]["gap_mean"]["mean"], r["vs_sft"]["gap_mean"]["ci95"])),
        (
            "MiniLM win rate vs SFT − 0.5",
            lambda r: (
                r["win_vs_sft"]["minilm"]["win_rate"] - 0.5,
                [x - 0.5 for x in r["win_vs_sft"]["minilm"]["ci95"]],
            ),
        ),
    )
    for ax, (title, value) in zip(axes, panels, strict=True):
        for y, name in enumerate(names):
            mean, (lo, hi) = value(rows[name])
            ax.errorbar([mean], [y], xerr=[[mean - lo], [hi - mean]], fmt="o", color="C0")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(f"{domain}: {title}")
    axes[0].set_yticks(range(len(names)), names)
    save_figure(fig, path)
    return True
