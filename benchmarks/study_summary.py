"""Stage 3 of the real-data study: the evidence tables from each domain's ``rewardsft study`` (its ``study.json``)
and the judged samples ``real_study`` adds, and one pooled line across domains.

Per domain: the judges' agreement with held-out human ratings; one row per method (seeds combined) with the
setting dev chose, the paired test-part differences from tuned SFT (gap, gap per token, pair accuracy,
log-likelihood) and, for the from-SFT methods, from their budget-matched control; win rates against tuned SFT's
samples under both judges; sample health and cost. Across domains: for each method, the sign of its difference
from tuned SFT per domain and a pooled mean with an interval that resamples test pairs within each domain.
Writes ``results.json`` and ``results.md`` in the study folder.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.study_judges import win_rate_ci
from rewardsft.config import RFTConfig, config_from_dict
from rewardsft.eval.paired import read_per_example
from rewardsft.studies.plan import budget_of
from rewardsft.studies.runner import WALL_TIME, launches

JUDGES = ("minilm", "vader")
PRIMARY = "gap"


def read_samples(folder: Path) -> list[dict[str, Any]]:
    path = folder / "eval" / "samples" / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seed_of(run: Path) -> int:
    return int(run.name.rsplit("-s", 1)[1])


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
    """Demonstrations seen and optimiser steps (the study's own budget count), generated tokens, training tokens
    and wall time of one run."""
    import yaml

    raw = yaml.safe_load((run / "config.yaml").read_text())
    config = config_from_dict(raw)
    metrics = read_metrics(run)
    generated = 0.0
    if config.method == "irft":
        for stats in sorted((run / "stages").glob("*/stats.json")):
            count = len((stats.parent / "generations.jsonl").read_text().splitlines())
            generated += json.loads(stats.read_text())["gen/mean_length"] * count
    elif isinstance(config, RFTConfig):
        per_round = config.rft.prompts_per_iteration * config.rft.samples_per_prompt
        generated = sum(m["gen/mean_length"] * per_round for m in metrics if "gen/mean_length" in m)
    # The study always caps the rows with data.max_rows; the budget is counted on that many.
    budget = budget_of(config, config.data.max_rows or 0)
    return {
        "demonstrations_seen": float(budget.demonstrations),
        "steps": float(budget.steps),
        "generated_tokens": generated,
        "train_tokens": sum(m.get("train/tokens", 0.0) for m in metrics),
        "wall_s": sum(launch["seconds"] for launch in launches(run / WALL_TIME)),
    }


def mean_cost(costs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.fmean(c[k] for c in costs) for k in costs[0]}


def signals(run: Path) -> dict[str, float]:
    """The logged metrics a guard rail can read: final margin/accuracy/loss, truncation share, reward accuracy."""
    last = {k: v for m in read_metrics(run) for k, v in m.items()}
    keep = (
        "irft/margin",
        "irft/accuracy",
        "irft/loss",
        "irft/gen_logratio_per_token",
        "gen/max_tokens_share",
        "rm/accuracy",
        "policy/kl",
    )
    return {k: last[k] for k in keep if k in last}


def rows_by(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{group: {metric: row}}`` of a list of paired-difference rows."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["group"], {})[row["metric"]] = row
    return out


def domain_results(domain_dir: Path) -> dict[str, Any]:
    path = domain_dir / "study.json"
    if not path.is_file():
        return {"note": "the study of this domain has not finished yet"}
    record = json.loads(path.read_text())
    runs = {name: [Path(r) for r in paths] for name, paths in record["runs"].items()}
    missing = [r for group in runs.values() for r in group if not (r / "eval" / "samples" / "health.json").is_file()]
    if missing:
        return {"note": f"{len(missing)} runs' samples are not judged yet (rerun `real_study run`)"}
    sft = runs["sft"]
    vs_sft, vs_control = rows_by(record["vs_sft"]), rows_by(record["vs_control"])
    rows: dict[str, Any] = {"base": base_row(domain_dir / "base", sft, record)}
    for name, group in runs.items():
        rows[name] = {
            "seeds": len(group),
            "chosen": record["chosen"][name],
            "controls": record["controls"].get(name),
            "test": test_summary(group),
            "vs_sft": vs_sft.get(name, {}),
            "vs_control": vs_control.get(name, {}),
            "win_vs_sft": win_rates(group, sft) if name != "sft" else {},
            "health": health(group),
            "cost": mean_cost([cost(r) for r in group]),
            "signals": {r.name: signals(r) for r in group},
        }
    judges = json.loads((domain_dir / "judges.json").read_text())
    return {"judges": judges, "answer": record["answer"], "split": record["split"], "rows": rows}


def test_summary(folders: Sequence[Path]) -> dict[str, float]:
    """Seed means of the unpaired test-part figures ``eval gap`` writes."""
    summaries = [json.loads((f / "eval" / "test-gap" / "summary.json").read_text()) for f in folders]
    return {k: statistics.fmean(s[k]["mean"] for s in summaries) for k in ("gap", "gap_mean", "accuracy")}


def base_row(base: Path, sft: list[Path], record: dict[str, Any]) -> dict[str, Any]:
    return {
        "seeds": 0,
        "test": test_summary([base]),
        "vs_sft": {r["metric"]: r for r in record["base_vs_sft"]},
        "win_vs_sft": base_win_rates(base, sft),
        "health": health([base]),
    }


def per_pair_difference(runs: Sequence[Path], sft: Sequence[Path], metric: str = PRIMARY) -> torch.Tensor:
    """Per test pair: the method's seed-averaged value minus tuned SFT's."""

    def averaged(group: Sequence[Path]) -> torch.Tensor:
        values = [read_per_example(r / "eval" / "test-gap").columns[metric] for r in group]
        return torch.tensor(values, dtype=torch.float64).mean(dim=0)

    return averaged(runs) - averaged(sft)


def pooled(differences: Sequence[torch.Tensor], n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean over domains of the mean per-pair difference, with a percentile interval that resamples pairs within
    each domain (a stratified bootstrap: every domain weighs the same, whatever its pair count)."""
    generator = torch.Generator().manual_seed(seed)
    point = float(torch.stack([d.mean() for d in differences]).mean())
    draws = torch.zeros(n_resamples, dtype=torch.float64)
    for d in differences:
        picks = torch.randint(0, len(d), (n_resamples, len(d)), generator=generator)
        draws += d[picks].mean(dim=1) / len(differences)
    lo, hi = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    verdict = "better" if lo > 0 else "worse" if hi < 0 else "not resolved"
    return {"mean": point, "ci95": [lo, hi], "verdict": verdict, "domains": len(differences)}


def pooled_lines(out: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Per method found in two or more finished domains: per-domain verdicts of the gap against tuned SFT and
    the pooled difference."""
    finished = {d: r for d, r in results.items() if "rows" in r}
    methods = sorted({m for r in finished.values() for m in r["rows"] if m not in ("base", "sft")})
    lines = {}
    for method in methods:
        domains = [d for d, r in finished.items() if method in r["rows"]]
        if len(domains) < 2:
            continue
        diffs = [per_pair_difference(runs_of(out / d, method), runs_of(out / d, "sft")) for d in domains]
        verdicts = {d: finished[d]["rows"][method]["vs_sft"].get(PRIMARY, {}).get("verdict") for d in domains}
        lines[method] = {"per_domain": verdicts, "pooled": pooled(diffs)}
        controls = {d: control_of(out / d, method) for d in domains}
        if all(controls.values()):  # a from-SFT method: also against SFT continued for its budget
            diffs = [per_pair_difference(runs_of(out / d, method), runs_of(out / d, str(controls[d]))) for d in domains]
            verdicts = {d: finished[d]["rows"][method]["vs_control"].get(PRIMARY, {}).get("verdict") for d in domains}
            lines[method] |= {"per_domain_vs_control": verdicts, "pooled_vs_control": pooled(diffs)}
    return lines


def control_of(domain_dir: Path, method: str) -> str | None:
    """The budget-matched control the study gave ``method`` (from-SFT methods only)."""
    controls = json.loads((domain_dir / "study.json").read_text())["controls"]
    return next((name for name, methods in controls.items() if method in methods), None)


def runs_of(domain_dir: Path, name: str) -> list[Path]:
    return [Path(r) for r in json.loads((domain_dir / "study.json").read_text())["runs"][name]]


def summarize(out: Path, grid: Any) -> Path:
    """``results.json`` and ``results.md`` for every domain studied, with the pooled line."""
    results = {d: domain_results(out / d) for d in grid.domains if (out / d).is_dir()}
    across = pooled_lines(out, results)
    (out / "results.json").write_text(json.dumps({"domains": results, "pooled": across}, indent=2))
    parts = ["# Real-data study: results (generated by `python -m benchmarks.real_study summarize`)", ""]
    for domain, result in results.items():
        parts += domain_markdown(domain, result)
    parts += pooled_markdown(across)
    (out / "results.md").write_text("\n".join(parts) + "\n")
    return out / "results.md"


def fmt_ci(entry: dict[str, Any] | None, key: str = "mean", digits: int = 2) -> str:
    """``+1.23 [+0.10, +2.40] better`` for a difference; ``0.61 [0.52, 0.70]`` for a win rate."""
    if not entry:
        return "—"
    lo, hi = entry["ci95"]
    sign = "+" if key == "mean" else ""
    verdict = entry.get("verdict_text", entry.get("verdict"))
    return f"{entry[key]:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]" + (
        f" {verdict}" if verdict else ""
    )


def domain_markdown(domain: str, result: dict[str, Any]) -> list[str]:
    if "rows" not in result:
        return [f"## {domain}", "", result.get("note", ""), ""]
    judges = result["judges"]
    lines = [
        f"## {domain}",
        "",
        *result["answer"],
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
        "| model | chosen | seeds | test gap | Δgap vs tuned SFT | Δgap/token | Δacc. | Δlog-lik./token | "
        "Δgap vs its control | win vs SFT (MiniLM) | win vs SFT (VADER) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        vs, win, ctl = row["vs_sft"], row["win_vs_sft"], row.get("vs_control", {})
        lines.append(
            f"| {name} | {row.get('chosen', '—')} | {row['seeds']} | {row['test']['gap']:.2f} | "
            f"{fmt_ci(vs.get('gap'))} | {fmt_ci(vs.get('gap_mean'), digits=3)} | "
            f"{fmt_ci(vs.get('correct'), digits=3)} | {fmt_ci(vs.get('chosen_logp_mean'), digits=3)} | "
            f"{fmt_ci(ctl.get('gap'))} | {fmt_ci(win.get('minilm'), 'win_rate')} | "
            f"{fmt_ci(win.get('vader'), 'win_rate')} |"
        )
    lines += ["", *health_table(result["rows"]), ""]
    return lines


def health_table(rows: dict[str, Any]) -> list[str]:
    lines = [
        "| model | mean tokens | identical to a demo | distinct-1 | distinct-2 | empty | truncated | MiniLM mean | "
        "VADER mean | demos seen | steps | generated tokens | wall (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        h, c = row["health"], row.get("cost")
        costs = (
            f"{c['demonstrations_seen']:.0f} | {c['steps']:.0f} | {c['generated_tokens']:.0f} | {c['wall_s'] / 60:.1f}"
            if c
            else "— | — | — | —"
        )
        lines.append(
            f"| {name} | {h['mean_tokens']:.1f} | {h['identical_to_demo']:.2f} | {h['distinct_1']:.2f} | "
            f"{h['distinct_2']:.2f} | {h['empty']:.2f} | {h['truncated']:.2f} | {h['judge_means']['minilm']:.2f} | "
            f"{h['judge_means']['vader']:.2f} | {costs} |"
        )
    return lines


def pooled_markdown(across: dict[str, Any]) -> list[str]:
    if not across:
        return ["## Across domains", "", "Fewer than two domains have finished.", ""]
    lines = [
        "## Across domains",
        "",
        "Held-out gap against tuned SFT: the verdict per domain, and the mean over domains of the mean per-pair "
        "difference (95% interval resampling test pairs within each domain; seeds averaged per pair).",
        "",
        "| method | per domain | pooled Δgap (nats) | per domain vs its control | pooled Δgap vs its control |",
        "|---|---|---|---|---|",
    ]
    for method, line in across.items():
        per = ", ".join(f"{d}: {v}" for d, v in line["per_domain"].items())
        control = ", ".join(f"{d}: {v}" for d, v in line.get("per_domain_vs_control", {}).items())
        pooled_control = fmt_ci(line["pooled_vs_control"]) if "pooled_vs_control" in line else ""
        lines.append(f"| {method} | {per} | {fmt_ci(line['pooled'])} | {control} | {pooled_control} |")
    return [*lines, ""]
