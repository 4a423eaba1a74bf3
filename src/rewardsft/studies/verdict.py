"""The study's answer: paired test-part differences of every method from tuned SFT (and of each from-SFT method
from its budget-matched control), a few plain sentences, and ``study.json`` / ``study.md``.

A method *wins* when its held-out gap is better than tuned SFT's on the test part and, if it started from the SFT
model, also better than SFT continued for the same demonstrations and steps. Intervals resample test pairs (seeds
averaged per pair, :mod:`rewardsft.eval.paired`); a verdict behind fewer than ``MIN_SEEDS`` seeds says so.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rewardsft.eval.paired import (
    MIN_SEEDS,
    Group,
    compare_groups,
    differences_markdown,
    paired_difference,
    read_per_example,
    verdict_text,
)
from rewardsft.layout import EVAL

if TYPE_CHECKING:
    from rewardsft.studies.plan import MethodSpec
    from rewardsft.studies.runner import Study

PRIMARY = "gap"
STUDY_METRICS = ("gap", "gap_mean", "correct", "chosen_logp_mean")
"""Per-pair columns of the study's gap evaluations: the gap (sum and per token), pair accuracy, and the chosen
side's log-likelihood per token (without pairs: the held-out demonstrations')."""
LABELS = {
    "gap": "gap (nats)",
    "gap_mean": "gap per token",
    "correct": "pair accuracy",
    "chosen_logp_mean": "log-lik. per token",
}


def groups_of(study: Study, finals: Mapping[str, list[Path]]) -> dict[str, Group]:
    return {spec.name: Group(spec.name, list(finals[spec.name])) for spec in study.specs}


def comparisons(study: Study, finals: Mapping[str, list[Path]]) -> dict[str, list[dict[str, Any]]]:
    """``vs_sft``: every method (controls too) against tuned SFT; ``vs_control``: each from-SFT method against its
    control; ``winrate``: the judge's win rates against tuned SFT's samples (when a judge was given)."""
    groups = groups_of(study, finals)
    sft = groups["sft"]
    out: dict[str, list[dict[str, Any]]] = {"vs_sft": compare_groups(list(groups.values()), sft, "test-gap")}
    out["vs_control"] = []
    for spec in study.specs:
        control = control_of(study, spec.name)
        if control is not None:
            out["vs_control"] += compare_groups(
                [groups[spec.name], groups[control.name]], groups[control.name], "test-gap"
            )
    judged = [g for name, g in groups.items() if name != "sft"]
    out["winrate"] = compare_groups([*judged, sft], sft, "test-winrate") if study.settings.judge is not None else []
    measured = study.settings.encoder is not None
    out["likeness"] = compare_groups(list(groups.values()), sft, "test-likeness") if measured else []
    return out


def likeness_table(study: Study, finals: Mapping[str, list[Path]]) -> list[dict[str, Any]]:
    """Per method (and the base): MAUVE and discriminator accuracy against the test part's human responses, seed
    means, and the ceiling two halves of those responses reach."""
    if study.settings.encoder is None:
        return []
    rows = []
    named = [("base model", [study.out / "base"]), *((name, runs) for name, runs in finals.items())]
    for name, folders in named:
        summaries = [json.loads((f / EVAL / "test-likeness" / "summary.json").read_text()) for f in folders]
        rows.append(
            {
                "method": name,
                "mauve": statistics.fmean(s["mauve"]["mean"] for s in summaries),
                "discriminator_accuracy": statistics.fmean(s["discriminator_accuracy"]["mean"] for s in summaries),
                "ceiling": summaries[0]["ceiling"],
            }
        )
    return rows


def control_of(study: Study, name: str) -> MethodSpec | None:
    """The budget-matched control of the from-SFT method ``name`` (None for any other method)."""
    return next((c for c in study.specs if name in c.controls), None)


def base_rows(study: Study, sft_runs: Sequence[Path]) -> list[dict[str, Any]]:
    """The base model (not a run) against tuned SFT's seed-averaged per-pair values, on the test part."""
    base = read_per_example(study.out / "base" / EVAL / "test-gap")
    sft = [read_per_example(run / EVAL / "test-gap") for run in sft_runs]
    rows = []
    for metric in (m for m in STUDY_METRICS if m in base.columns):
        reference = [statistics.fmean(v) for v in zip(*(e.columns[metric] for e in sft), strict=True)]
        diff = paired_difference(base.columns[metric], reference, metric)
        rows.append({"group": "base model", **diff.to_dict(), "verdict_text": verdict_text(diff.verdict, len(sft))})
    return rows


def row_of(rows: Sequence[Mapping[str, Any]], group: str, metric: str = PRIMARY) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["group"] == group and r["metric"] == metric), None)


def interval(row: Mapping[str, Any] | None, digits: int = 2) -> str:
    if row is None:
        return "—"
    lo, hi = row["ci95"]
    return f"{row['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] {row['verdict_text']}"


def outcome(study: Study, found: Mapping[str, list[dict[str, Any]]], name: str) -> dict[str, Any]:
    """One method's verdict on the primary measure: against tuned SFT and (from SFT) against its control."""
    spec = next(s for s in study.specs if s.name == name)
    vs_sft = row_of(found["vs_sft"], name)
    vs_control = row_of(found["vs_control"], name) if spec.from_sft else None
    beats_sft = vs_sft is not None and vs_sft["verdict"] == "better"
    beats_control = vs_control is None or vs_control["verdict"] == "better"
    return {
        "method": name,
        "from_sft": spec.from_sft,
        "vs_sft": vs_sft,
        "vs_control": vs_control,
        "wins": beats_sft and beats_control and (not spec.from_sft or vs_control is not None),
        "loses": vs_sft is not None and vs_sft["verdict"] == "worse",
    }


def plain_answer(study: Study, found: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """The short answer in words, most important first."""
    methods = [s.name for s in study.specs if s.name != "sft" and not s.is_control]
    outcomes = [outcome(study, found, name) for name in methods]
    winners = sorted((o for o in outcomes if o["wins"]), key=lambda o: -o["vs_sft"]["mean"])
    sft_setting = study.chosen["sft"].setting
    lines = []
    if winners:
        best = winners[0]
        beyond = (
            f", and SFT continued for the same demonstrations and steps by {interval(best['vs_control'])}"
            if best["from_sft"]
            else ""
        )
        lines.append(
            f"**Yes, on your test pairs: {best['method']}** beat SFT tuned the same way (SFT at {sft_setting}) by "
            f"{interval(best['vs_sft'])} nats of held-out gap{beyond}."
        )
    else:
        lines.append(
            f"**No reward-learning method beat tuned SFT on your test pairs.** Train with SFT at {sft_setting} "
            "(chosen on the dev pairs)."
        )
    lines.append("")
    for o in outcomes:
        against = f"vs tuned SFT {interval(o['vs_sft'])}"
        if o["from_sft"]:
            against += f"; vs SFT continued for its budget {interval(o['vs_control'])}"
        human = row_of(found.get("likeness", []), o["method"], "human_prob")
        if human is not None:
            against += f"; P(human) of its samples vs tuned SFT's {interval(human, 3)}"
        lines.append(f"- {o['method']} ({study.chosen[o['method']].setting}): {against}")
    lines += ["", *edge_notes(study)]
    seeds = study.settings.seeds
    if seeds < MIN_SEEDS:
        lines.append(
            f"These verdicts rest on {seeds} seed{'s' if seeds > 1 else ''}: the intervals resample pairs and cannot "
            f"see seed-to-seed spread. Rerun with --seeds {MIN_SEEDS} (finished runs are kept) before acting on them."
        )
    if study.split.kind == "demonstrations":
        lines.append(
            "Measured without preference pairs: the gap is held-out demonstrations over the base model's own samples "
            "for their prompts, and the log-likelihood is the held-out demonstrations'. Give --pairs for the gap "
            "between human-preferred and dispreferred responses."
        )
    return lines


def edge_notes(study: Study) -> list[str]:
    """Methods whose chosen lr is the grid's smallest or largest: a value beyond it may be better still."""
    lrs = sorted(study.settings.lrs)
    if len(lrs) < 2:
        return []
    edges = [
        f"{name} ({'largest' if t.lr == lrs[-1] else 'smallest'}, {t.lr:g})"
        for name, t in study.chosen.items()
        if t.lr in (lrs[0], lrs[-1])
    ]
    if not edges:
        return []
    return [
        f"Chosen at the edge of the lr grid: {', '.join(edges)}; widen --lrs to see whether a value beyond it is better."
    ]


def tuning_markdown(study: Study) -> list[str]:
    lines = ["## Tuning on the dev part", ""]
    lines.append("| method | setting | budget | dev gap | dev accuracy | dev chosen log-lik. | chosen |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, tries in study.tries.items():
        for t in tries:
            chosen = "✓" if t["setting"] == study.chosen[name].setting else ""
            budget = f"{t['budget']['demonstrations']} demos / {t['budget']['steps']} steps"
            logp = t.get("dev_chosen_logp", float("nan"))
            lines.append(
                f"| {name} | {t['setting']} | {budget} | {t['dev_gap']:.3f} | {t['dev_accuracy']:.3f} | {logp:.1f} "
                f"| {chosen} |"
            )
    counts = {name: len(tries) for name, tries in study.tries.items()}
    notes = [f"{name}: {note}." for name, note in study.tuning_notes.items() if note]
    lines += [
        "",
        "Chosen: the best dev gap among the tries whose dev preferred responses are at least as likely as under the "
        f"base model (dev chosen log-lik. ≥ {study.floor:.1f}; a gap reached by pushing both sides of every pair down "
        "is not a better model).",
        *notes,
        "",
        f"Tries per method: {json.dumps(counts)}.",
        "",
    ]
    return lines


def test_markdown(study: Study, found: Mapping[str, list[dict[str, Any]]], base: list[dict[str, Any]]) -> list[str]:
    lines = ["## Test part: paired differences from tuned SFT", ""]
    header = "| method | seeds | " + " | ".join(f"Δ {LABELS[m]}" for m in STUDY_METRICS) + " | Δ gap vs its control |"
    lines += [header, "|" + "---|" * (len(STUDY_METRICS) + 3)]
    for spec in study.specs:
        if spec.name == "sft":
            continue
        cells = [interval(row_of(found["vs_sft"], spec.name, m), 3) for m in STUDY_METRICS]
        control = interval(row_of(found["vs_control"], spec.name)) if spec.from_sft and not spec.is_control else ""
        seeds = study.settings.seeds
        lines.append(f"| {spec.name} | {seeds} | " + " | ".join(cells) + f" | {control} |")
    cells = [interval(row_of(base, "base model", m), 3) for m in STUDY_METRICS]
    lines.append("| base model (untrained) | — | " + " | ".join(cells) + " | |")
    lines += ["", "All differences, with sign tests:", "", differences_markdown(found["vs_sft"], "sft")]
    if found["vs_control"]:
        lines += ["From-SFT methods against their budget-matched control:", ""]
        lines.append(differences_markdown(found["vs_control"], "its control"))
    if found["winrate"]:
        lines += ["## Win rate against tuned SFT's samples (your judge)", ""]
        lines.append(differences_markdown(found["winrate"], "sft"))
    return lines


def likeness_markdown(rows: list[dict[str, Any]], found: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    if not rows:
        return []
    top = rows[0]["ceiling"]
    lines = [
        "## Human-likeness of the samples (test prompts, against the test part's human responses)",
        "",
        "MAUVE (1: the samples' distribution cannot be told from the human responses') and the out-of-fold accuracy "
        "of a classifier telling samples from human responses (0.5: indistinguishable), seed means.",
    ]
    if "mauve" in top:
        lines.append(
            f"Two halves of the human responses reach MAUVE {top['mauve']['mean']:.3f} and accuracy "
            f"{top['accuracy']['mean']:.3f}: the ceiling at this sample size."
        )
    lines += ["", "| model | MAUVE | discriminator accuracy | Δ P(human) vs tuned SFT |", "|---|---|---|---|"]
    for r in rows:
        diff = interval(row_of(found["likeness"], r["method"], "human_prob"), 3) if r["method"] != "sft" else ""
        lines.append(f"| {r['method']} | {r['mauve']:.3f} | {r['discriminator_accuracy']:.3f} | {diff} |")
    return [*lines, ""]


def write_verdict(study: Study, finals: Mapping[str, list[Path]]) -> Path:
    """``study.json`` (everything) and ``study.md`` (the answer first); returns the Markdown file."""
    found = comparisons(study, finals)
    base = base_rows(study, finals["sft"])
    likeness = likeness_table(study, finals)
    answer = plain_answer(study, found)
    record = {
        "answer": answer,
        "split": {"kind": study.split.kind, "unit": study.split.unit, "counts": study.split.counts},
        "notes": study.split.notes,
        "chosen": {name: trial.setting for name, trial in study.chosen.items()},
        "controls": {s.name: list(s.controls) for s in study.specs if s.is_control},
        "tuning": study.tries,
        "runs": {name: [str(r) for r in runs] for name, runs in finals.items()},
        "base_vs_sft": base,
        "human_likeness": likeness,
        **found,
    }
    (study.out / "study.json").write_text(json.dumps(record, indent=2))
    lines = ["# rewardsft study", "", *answer, "", *data_markdown(study), *tuning_markdown(study)]
    lines += test_markdown(study, found, base)
    lines += likeness_markdown(likeness, found)
    path = study.out / "study.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(answer), flush=True)
    print(f"study: {path}", flush=True)
    return path


def control_text(study: Study, control: MethodSpec) -> str:
    """``sft-continued-b8-n32 for spin-from-sft (64 demonstrations, 32 steps; exact)``."""
    budget = next(t["budget"] for t in study.tries.get(control.name, [])) if study.tries.get(control.name) else None
    spent = f"{budget['demonstrations']} demonstrations, {budget['steps']} steps; " if budget else ""
    return f"{control.name} for {', '.join(control.controls)} ({spent}{control.matched})"


def data_markdown(study: Study) -> list[str]:
    from rewardsft.studies.runner import used_text

    split, s = study.split, study.settings
    held = "pairs" if split.kind == "pairs" else "held-out demonstrations"
    lines = [
        "## Data",
        "",
        f"- model: `{s.model}`; demonstrations: `{s.data.data}`"
        + (f"; pairs: `{s.data.pairs}`" if s.data.pairs else ""),
        f"- {used_text(study)} training demonstrations; {split.counts['dev']} dev and {split.counts['test']} "
        f"test {held}, no {split.unit} on both sides",
        *(f"- note: {note}" for note in split.notes),
        "- budget-matched controls: "
        + (", ".join(control_text(study, c) for c in study.specs if c.is_control) or "none"),
        "",
    ]
    return lines
