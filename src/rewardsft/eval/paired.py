"""Paired comparisons: differences between models on the SAME pairs (or prompts), with paired intervals.

Two models evaluated on the same held-out pairs differ far less from pair to pair than the pairs differ from
each other, so the per-pair difference has a much narrower interval than either model's own (measured on
SmolLM2-135M, 200 pairs: base gap 6.12 [−2.85, 14.94], SFT 7.29 [−1.22, 15.74], but SFT − base +1.17
[+0.16, +2.27]). Everything here works on the per-example files ``eval gap`` and ``eval winrate`` write.

- :func:`paired_difference`: mean of ``a − b`` over aligned examples, a percentile bootstrap interval that
  resamples examples (the same resample for both models, i.e. resampling the differences), an exact two-sided
  sign test and a sign-flip permutation p-value; worded "better", "worse" or "not resolved" from the interval.
- Seeds: runs whose configs differ only in ``seed`` form one group; a group's per-example value is the mean over
  its seeds, so the interval is that of the seed-averaged difference; the spread of the per-seed differences is
  reported beside it. The interval resamples examples, not seeds, so it cannot see seed-to-seed variance: a
  verdict from fewer than :data:`MIN_SEEDS` seeds on either side is shown marked, e.g. "better (1 seed)".
- Direction: "better" means better in the metric's own direction (:func:`higher_is_better`), so one number
  never gets two verdicts.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rewardsft.errors import ConfigError
from rewardsft.eval.stats import bootstrap_ci
from rewardsft.layout import CONFIG_FILE, EVAL, GENERATIONS_FILE, SUMMARY_FILE

GAP_FILE = "per_example.csv"
WINRATE_FILE = GENERATIONS_FILE
GAP_METRICS = ("gap", "gap_mean", "correct", "implicit_margin")
"""Per-pair columns compared for a log-prob gap evaluation (``implicit_margin`` only when every run has it)."""
# Settings that do not make two runs different methods: runs equal in everything else are seeds of one method.
SEED_ONLY_KEYS = ("seed", "output_dir", "resume", "overwrite", "logging")
LOWER_IS_BETTER = frozenset({"sample_habit"})
"""Compared metrics where the smaller value is the better one; every other metric is higher-is-better. An
evaluation declares its own in its summary's ``lower_is_better`` list (the demo's accuracy evaluation does for its
habit share); this set keeps the direction of summaries written before that field existed."""
MIN_SEEDS = 3
"""Fewer seeds than this on either side: the verdict is shown with the seed count (the interval cannot see
seed-to-seed variance)."""


def higher_is_better(metric: str, summary: Mapping[str, Any] | None = None) -> bool:
    """The direction of ``metric``: the one place eval compare, the report and the demo learn it from."""
    declared = (summary or {}).get("lower_is_better") or ()
    return metric not in LOWER_IS_BETTER and metric not in declared


def verdict_text(verdict: str, seeds: int) -> str:
    """The verdict as shown to people: marked with the seed count when fewer than :data:`MIN_SEEDS` seeds (the
    fewer of the two sides) stand behind it, e.g. "better (1 seed)"."""
    if seeds >= MIN_SEEDS:
        return verdict
    return f"{verdict} ({seeds} seed{'' if seeds == 1 else 's'})"


@dataclass(frozen=True)
class PairedDifference:
    metric: str
    n: int
    mean: float
    """Mean over examples of (model − baseline)."""
    ci95: tuple[float, float]
    """Percentile bootstrap interval of the mean, resampling examples."""
    positive: int
    zero: int
    negative: int
    sign_p: float
    """Exact two-sided sign test on the non-zero differences."""
    permutation_p: float
    """Two-sided sign-flip permutation test of the mean difference."""
    higher_is_better: bool = True
    """The metric's direction: a lower-is-better metric whose interval lies above zero is "worse"."""

    @property
    def verdict(self) -> str:
        """From the interval alone: "better" when it lies on the metric's good side of zero, "worse" on the other,
        else "not resolved"."""
        lo, hi = self.ci95
        if lo > 0:
            return "better" if self.higher_is_better else "worse"
        if hi < 0:
            return "worse" if self.higher_is_better else "better"
        return "not resolved"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci95": list(self.ci95), "verdict": self.verdict}


def paired_difference(
    model: Sequence[float],
    baseline: Sequence[float],
    metric: str = "",
    n_resamples: int = 2000,
    seed: int = 0,
    higher: bool | None = None,
) -> PairedDifference:
    """Compare two aligned per-example sequences (``model[i]`` and ``baseline[i]`` are the same example).

    ``higher``: whether higher is better; by default the metric's own direction (:func:`higher_is_better`).
    """
    if len(model) != len(baseline):
        raise ValueError(f"{metric}: {len(model)} values against {len(baseline)}: the examples are not aligned")
    direction = higher_is_better(metric) if higher is None else higher
    diffs = torch.tensor(model, dtype=torch.float64) - torch.tensor(baseline, dtype=torch.float64)
    n = diffs.numel()
    if n == 0:
        nan = float("nan")
        return PairedDifference(metric, 0, nan, (nan, nan), 0, 0, 0, nan, nan, direction)
    positive, negative = int((diffs > 0).sum()), int((diffs < 0).sum())
    return PairedDifference(
        metric,
        n,
        float(diffs.mean()),
        bootstrap_ci(diffs, n_resamples, seed=seed),
        positive,
        n - positive - negative,
        negative,
        sign_test_p(positive, negative),
        sign_flip_p(diffs, n_resamples, seed),
        direction,
    )


def sign_test_p(positive: int, negative: int) -> float:
    """Exact two-sided binomial test of P(difference > 0) = 1/2 over the non-zero differences."""
    n = positive + negative
    if n == 0:
        return 1.0
    k = min(positive, negative)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def sign_flip_p(diffs: torch.Tensor, n_resamples: int, seed: int) -> float:
    """Two-sided permutation p-value: the share of sign assignments (each difference's sign flipped or not) whose
    mean is at least as far from zero as the observed one.

    Exact when the ``2**n`` assignments number at most ``n_resamples``: all are enumerated (the observed one and
    its mirror among them, so ``n`` differences of one sign give ``2 / 2**n``). Otherwise ``n_resamples`` random
    assignments, counting the observed one too, so p is never 0.
    """
    observed = float(diffs.mean().abs())
    if observed == 0.0:
        return 1.0
    n = diffs.numel()
    # Ties in floating point: a flipped mean equal to the observed one up to rounding counts as extreme.
    threshold = observed * (1 - 1e-9)
    if 2**n <= n_resamples:
        bits = (torch.arange(2**n).unsqueeze(1) >> torch.arange(n)) & 1
        flipped = ((bits.double() * 2 - 1) * diffs).mean(dim=1).abs()
        return int((flipped >= threshold).sum()) / 2**n
    generator = torch.Generator().manual_seed(seed + 1)
    signs = torch.randint(0, 2, (n_resamples, n), generator=generator).double() * 2 - 1
    flipped = (signs * diffs).mean(dim=1).abs()
    extreme = int((flipped >= threshold).sum())
    return (extreme + 1) / (n_resamples + 1)


@dataclass
class PerExample:
    """One evaluation's per-example values, in file order, with the keys that identify the examples."""

    source: Path
    kind: str
    """``logprob_gap`` or ``win_rate``."""
    keys: list[str]
    columns: dict[str, list[float]]
    summary: dict[str, Any]


def read_per_example(eval_dir: Path) -> PerExample:
    """Read ``eval gap`` (``per_example.csv``) or ``eval winrate`` (``generations.jsonl``) output."""
    summary_path = eval_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise ConfigError(f"{eval_dir} has no {SUMMARY_FILE}: not an evaluation output (rewardsft eval ... --out)")
    summary = json.loads(summary_path.read_text())
    kind = summary.get("kind")
    if kind == "logprob_gap" or "paired_metrics" in summary:
        return _read_gap(eval_dir, summary)
    if kind == "win_rate":
        return _read_win_rate(eval_dir, summary)
    raise ConfigError(f"{summary_path}: kind {kind!r} has no per-example results to compare")


def _read_gap(eval_dir: Path, summary: dict[str, Any]) -> PerExample:
    path = eval_dir / GAP_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing: rerun `rewardsft eval gap --out {eval_dir}`")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # pair_id hashes the pair's texts; older outputs without it are identified by row number alone.
    keys = [f"row {r['row']}" + (f" ({r['pair_id']})" if r.get("pair_id") else "") for r in rows]
    wanted = summary.get("paired_metrics", GAP_METRICS)
    names = [m for m in wanted if rows and m in rows[0]]
    columns = {m: [float(r[m]) for r in rows] for m in names}
    return PerExample(eval_dir, str(summary["kind"]), keys, columns, summary)


def _read_win_rate(eval_dir: Path, summary: dict[str, Any]) -> PerExample:
    path = eval_dir / WINRATE_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing: rerun `rewardsft eval winrate --out {eval_dir}`")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = [f"prompt {i + 1} ({json.dumps(r['prompt'], sort_keys=True)[:60]})" for i, r in enumerate(records)]
    columns = {"win_rate": [float(r["outcome"]) for r in records]}
    return PerExample(eval_dir, "win_rate", keys, columns, summary)


def check_aligned(first: PerExample, second: PerExample, same_baseline: bool = True) -> None:
    """Refuse (exit 2) two evaluations that are not of the same kind on the same examples in the same order.

    ``same_baseline``: win rates must also be judged against the same model (seeds of one method may each be
    judged against the baseline method's run of the same seed).
    """
    if first.kind != second.kind:
        raise ConfigError(f"{first.source} is a {first.kind} evaluation but {second.source} is a {second.kind} one")
    for position, (a, b) in enumerate(zip(first.keys, second.keys, strict=False)):
        if a != b:
            raise ConfigError(
                f"{first.source} and {second.source} were evaluated on different examples: "
                f"the first mismatch is example {position + 1}: {a} vs {b}"
            )
    if len(first.keys) != len(second.keys):
        shorter, longer = sorted((first, second), key=lambda e: len(e.keys))
        raise ConfigError(
            f"{longer.source} has {len(longer.keys)} examples but {shorter.source} only {len(shorter.keys)}: "
            f"the first mismatch is example {len(shorter.keys) + 1}: {longer.keys[len(shorter.keys)]} vs none"
        )
    if same_baseline and first.kind == "win_rate" and first.summary.get("baseline") != second.summary.get("baseline"):
        raise ConfigError(
            f"{first.source} and {second.source} were judged against different baselines "
            f"({first.summary.get('baseline')!r} vs {second.summary.get('baseline')!r})"
        )


@dataclass
class Group:
    """Runs that differ only by seed (one run is a group of one)."""

    label: str
    runs: list[Path]


def group_by_seed(run_dirs: Sequence[Path]) -> list[Group]:
    """Runs whose ``config.yaml`` agree on everything but ``seed`` (and output/logging settings), in first-seen order.

    Configs are compared with every setting filled in, so a run written before a setting existed (its file lacks
    the key) still groups with a run that has the setting at its default.
    """
    import yaml

    from rewardsft.config import config_from_dict

    groups: list[tuple[str, Group]] = []
    for run in run_dirs:
        path = run / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"{run} is not a run directory (no {CONFIG_FILE})")
        config = yaml.safe_load(path.read_text()) or {}
        # A key this version does not know: compare the files as written.
        with contextlib.suppress(ConfigError, TypeError, AttributeError):
            config = config_from_dict(config).to_dict()
        identity = json.dumps({k: v for k, v in config.items() if k not in SEED_ONLY_KEYS}, sort_keys=True)
        match = next((g for key, g in groups if key == identity), None)
        if match is None:
            groups.append((identity, Group(run.name, [run])))
        else:
            match.runs.append(run)
    for _, group in groups:
        if len(group.runs) > 1:
            # "irft-s1", "irft-s2" -> "irft (2 seeds)"
            name = re.sub(r"[-_.]?(s|seed)[-_]?\d+$", "", group.runs[0].name) or group.runs[0].name
            group.label = f"{name} ({len(group.runs)} seeds)"
    return [g for _, g in groups]


def group_values(group: Group, eval_name: str) -> tuple[PerExample, dict[str, list[list[float]]]]:
    """The group's first evaluation (for keys and kind) and, per metric, each seed's per-example values."""
    evals = [read_per_example(run / EVAL / eval_name) for run in group.runs]
    for other in evals[1:]:
        check_aligned(evals[0], other, same_baseline=False)
    per_seed = {m: [e.columns[m] for e in evals] for m in evals[0].columns if all(m in e.columns for e in evals)}
    return evals[0], per_seed


def compare_groups(
    groups: Sequence[Group], baseline: Group, eval_name: str, n_resamples: int = 2000, seed: int = 0
) -> list[dict[str, Any]]:
    """For every group but the baseline: the paired difference of each metric from the baseline's, seed-averaged.

    Win-rate evaluations are already paired with their baseline prompt by prompt: their difference is the win
    rate (ties half) minus 0.5, and every group's judge baseline must be the same model.

    Each row carries ``seeds`` (the group's) and ``baseline_seeds``; ``verdict`` stays one of better / worse /
    not resolved, ``verdict_text`` is what people are shown (marked when either side has fewer than
    :data:`MIN_SEEDS` seeds).
    """
    others = [(group, *group_values(group, eval_name)) for group in groups if group is not baseline]
    if not others:
        return []
    kind = others[0][1].kind
    # A gap is compared with the baseline's own gap on the same pairs; a win rate was judged against the
    # baseline already, so the reference is 0.5 (ties count half) and the groups must share prompts and baseline.
    paired_with_base = kind != "win_rate"
    base_eval, base_values = group_values(baseline, eval_name) if paired_with_base else (others[0][1], {})
    rows = []
    for group, first, values in others:
        check_aligned(base_eval, first)
        for metric, seeds in values.items():
            if paired_with_base and metric not in base_values:
                continue
            reference = _mean_over(base_values[metric]) if paired_with_base else [0.5] * len(first.keys)
            higher = higher_is_better(metric, first.summary)
            difference = paired_difference(_mean_over(seeds), reference, metric, n_resamples, seed, higher)
            per_seed = [sum(s) / len(s) - sum(reference) / len(reference) for s in seeds]
            # A win rate's seeds were each judged against a baseline seed: the baseline's count bounds it too.
            fewer = min(len(seeds), len(baseline.runs))
            rows.append(
                {
                    "group": group.label,
                    "runs": [str(r) for r in group.runs],
                    "eval": eval_name,
                    "kind": kind,
                    **difference.to_dict(),
                    "verdict_text": verdict_text(difference.verdict, fewer),
                    "seeds": len(seeds),
                    "baseline_seeds": len(baseline.runs),
                    "per_seed_mean": per_seed,
                    "seed_spread": _std(per_seed),
                }
            )
    return rows


def _mean_over(seeds: list[list[float]]) -> list[float]:
    return [sum(values) / len(values) for values in zip(*seeds, strict=True)]


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def compare_runs(
    run_dirs: Sequence[Path], baseline: Path, eval_names: Sequence[str] | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Every run (seeds grouped) against the baseline run's group, for each named evaluation under ``RUN/eval/``.

    Without names: every evaluation with per-example results that all compared runs have.
    """
    runs = list(dict.fromkeys([*run_dirs, baseline]))
    groups = group_by_seed(runs)
    base = next(g for g in groups if baseline in g.runs)
    others = [r for g in groups if g is not base for r in g.runs]
    if not others:
        raise ConfigError("nothing to compare: every run given is the baseline or one of its seeds")
    names = list(eval_names) if eval_names else _common_evals(others)
    if not names:
        raise ConfigError(f"the runs share no gap or win-rate evaluation under {EVAL}/ (rewardsft eval ... --out)")
    return [row for name in names for row in compare_groups(groups, base, name, seed=seed)]


def _common_evals(runs: Sequence[Path]) -> list[str]:
    found = [{p.parent.name for p in (run / EVAL).glob(f"*/{SUMMARY_FILE}") if _comparable(p)} for run in runs]
    return sorted(set.intersection(*found)) if found else []


def _comparable(summary: Path) -> bool:
    content = json.loads(summary.read_text())
    return content.get("kind") in ("logprob_gap", "win_rate") or "paired_metrics" in content


def differences_markdown(rows: Sequence[dict[str, Any]], baseline: str) -> str:
    """A "difference vs baseline" table, one line per run (group) and metric, with its verdict."""
    lines = [
        f"Paired differences against **{baseline}** on the same examples (95% bootstrap interval over examples; "
        "win rates are against the baseline already, so their difference is the win rate − 0.5). The verdict "
        "reads the interval alone, in the metric's direction: on the good side of 0 better, on the other worse, "
        "else not resolved (for a lower-is-better metric, marked ↓, a positive difference is worse). A verdict "
        f"marked (1 seed) or (2 seeds) rests on fewer than {MIN_SEEDS} seeds of the run or the baseline: the "
        "interval resamples examples of the seed-averaged values and cannot see seed-to-seed variance.",
        "",
        "| run | eval | metric | difference | 95% CI | verdict | +/0/− | sign p | permutation p | seeds (spread) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f"{r['seeds']}" + (f" (sd {r['seed_spread']:.3g})" if r["seed_spread"] is not None else "")
        lines.append(
            f"| {r['group']} | {r['eval']} | {metric_label(r)} | {r['mean']:+.4g} | [{r['ci95'][0]:+.4g}, "
            f"{r['ci95'][1]:+.4g}] | {shown_verdict(r)} | {r['positive']}/{r['zero']}/{r['negative']} | "
            f"{r['sign_p']:.3g} | {r['permutation_p']:.3g} | {spread} |"
        )
    return "\n".join(lines) + "\n"


def shown_verdict(row: Mapping[str, Any]) -> str:
    """A comparison row's verdict as people see it (rows saved before ``verdict_text`` existed: the bare word)."""
    return str(row.get("verdict_text", row["verdict"]))


def metric_label(row: Mapping[str, Any]) -> str:
    """The metric's name, with ↓ when lower is better."""
    return f"{row['metric']} ↓" if row.get("higher_is_better") is False else str(row["metric"])


def write_comparison(rows: Sequence[dict[str, Any]], baseline: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps({"baseline": baseline, "differences": list(rows)}, indent=2))
    (out / "compare.md").write_text(differences_markdown(rows, baseline))
