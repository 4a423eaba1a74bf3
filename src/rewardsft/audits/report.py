"""What the audit writes for its user: the ranked scores, the flagged rows, the clean file, and a report."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewardsft.audits.runner import Rows

HEAD = 80
"""Characters of a prompt or response kept in ``scores.jsonl`` (the report shows the lowest rows in full)."""
LOWEST_IN_FULL = 20
BINS = 20


def head(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= HEAD else text[: HEAD - 1] + "…"


def write_outputs(out: Path, rows: Rows, scored: dict[str, list[Any]], record: dict[str, Any]) -> Path:
    """``scores.jsonl`` (input order), ``flagged.jsonl`` (lowest first), ``clean.jsonl`` (the rows kept, as they
    were in the input), ``rejected.jsonl`` (rows the loader refused, by line), ``report.md`` and ``report.html``."""
    entries = [
        {
            "row": line,
            "score": finite(scored["score"][i]),
            "percentile": scored["percentile"][i],
            "reward": finite(scored["reward"][i]),
            **({"sample_reward": finite(scored["sample_reward"][i])} if "sample_reward" in scored else {}),
            "fold": scored["fold"][i],
            "flagged": scored["flagged"][i],
            "baseline_logp_per_token": finite(scored["baseline_logp_per_token"][i]),
            "prompt": head(ex.prompt),
            "response": head(ex.response),
        }
        for i, (line, ex) in enumerate(zip(rows.lines, rows.examples, strict=True))
    ]
    write_jsonl(out / "scores.jsonl", entries)
    order = sorted(range(len(entries)), key=lambda i: scored["score"][i])
    flagged = [entries[i] for i in order if entries[i]["flagged"]]
    write_jsonl(out / "flagged.jsonl", flagged)
    kept = [raw for raw, hit in zip(rows.raw, scored["flagged"], strict=True) if not hit]
    write_jsonl(out / "clean.jsonl", kept)
    write_jsonl(out / "rejected.jsonl", [{"row": line, "error": error} for line, error in rows.rejected])
    lowest = order[:LOWEST_IN_FULL]
    full = [(entries[i], rows.examples[i]) for i in lowest]
    markdown = report_markdown(record, scored["score"], full, rows.rejected)
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(report_html(record, scored["score"], full, rows.rejected))
    return out / "report.md"


def finite(value: float) -> float | None:
    """JSON has no infinity: a row that could not be scored is written as null (and ranks lowest)."""
    return value if math.isfinite(value) else None


def write_jsonl(path: Path, records: Sequence[Any]) -> None:
    # default=str: rows read from parquet or the hub may hold dates or decimals, which JSON has no type for
    path.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))


def histogram(scores: Sequence[float], bins: int = BINS) -> list[tuple[float, float, int]]:
    """(low, high, count) per equal-width bin of the finite scores."""
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        return []
    lo, hi = min(finite), max(finite)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for s in finite:
        counts[min(int((s - lo) / width), bins - 1)] += 1
    return [(lo + b * width, lo + (b + 1) * width, c) for b, c in enumerate(counts)]


def how_made(record: dict[str, Any]) -> str:
    s = record["settings"]
    reward = (
        "an explicit reward model (RFT's Bradley-Terry step: demonstrations over the start model's own samples)"
        if s["reward"] == "explicit"
        else "the implicit reward of a SPIN run, β·log(π_θ/π_start)"
    )
    cut = f"the lowest {record['share']:.0%}" if record["below"] is None else f"scores below {record['below']:g}"
    n = s.get("against_samples", 0)
    against = f" minus the mean reward of {n} samples of the start model for its prompt (`sample_reward`)" if n else ""
    return (
        f"Each row was scored out of fold: the {record['rows']} rows were split into {s['folds']} folds (identical "
        f"rows together); for each fold, {reward} was learned on the other folds ({s['passes']} passes) from "
        f"{record['start_model']}, and the fold's rows were scored by it. A row's score is the reward of its "
        f"response{against}, as a z-score within its fold (implicit reward: a row with no room for its response "
        f"scores lowest). Flagged: {cut} ({record['flagged']} rows)."
    )


def report_markdown(
    record: dict[str, Any],
    scores: Sequence[float],
    lowest: Sequence[tuple[dict[str, Any], Any]],
    rejected: Sequence[tuple[int, str]],
) -> str:
    peak = max((c for _, _, c in histogram(scores)), default=1)
    lines = [f"# Audit of {record['settings']['data']}", "", how_made(record), "", "## Scores", "", "```"]
    for lo, hi, count in histogram(scores):
        lines.append(f"{lo:+7.2f} .. {hi:+7.2f} | {'#' * round(40 * count / peak):<40} {count}")
    lines += ["```", "", f"## The {len(lowest)} lowest-ranked rows", ""]
    for entry, example in lowest:
        flagged = " (flagged)" if entry["flagged"] else ""
        lines += [
            f"### row {entry['row']}: score {show(entry['score'])}, percentile {entry['percentile']:.2f}{flagged}",
            "",
            f"- prompt: {full_text(example.prompt)}",
            f"- response: {full_text(example.response)}",
            "",
        ]
    if rejected:
        lines += ["## Rows the loader rejected (not scored, not in clean.jsonl)", ""]
        lines += [f"- row {line}: {error}" for line, error in rejected]
        lines.append("")
    return "\n".join(lines)


def show(score: float | None) -> str:
    return "not scored (no room for the response)" if score is None else f"{score:+.2f}"


def full_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("\n", " ⏎ ")


def report_html(
    record: dict[str, Any],
    scores: Sequence[float],
    lowest: Sequence[tuple[dict[str, Any], Any]],
    rejected: Sequence[tuple[int, str]],
) -> str:
    bars = histogram(scores)
    peak = max((c for _, _, c in bars), default=1)
    width, height = 600, 160
    step = width / max(len(bars), 1)
    rects = "".join(
        f'<rect x="{i * step:.1f}" y="{height - height * c / peak:.1f}" width="{step - 1:.1f}" '
        f'height="{height * c / peak:.1f}" fill="#4a7"><title>{lo:+.2f}..{hi:+.2f}: {c}</title></rect>'
        for i, (lo, hi, c) in enumerate(bars)
    )
    span = f"{bars[0][0]:+.2f} … {bars[-1][1]:+.2f}" if bars else ""
    rows = "".join(
        f"<tr><td>{e['row']}</td><td>{show(e['score'])}</td><td>{'yes' if e['flagged'] else ''}</td>"
        f"<td>{esc(x.prompt)}</td><td>{esc(x.response)}</td></tr>"
        for e, x in lowest
    )
    refused = "".join(f"<li>row {line}: {esc(error)}</li>" for line, error in rejected)
    return (
        f"<!doctype html><meta charset='utf-8'><title>Audit</title>"
        f"<h1>Audit of {esc(record['settings']['data'])}</h1><p>{esc(how_made(record))}</p>"
        f"<h2>Scores</h2><svg width='{width}' height='{height}'>{rects}</svg><p>{span}</p>"
        f"<h2>The {len(lowest)} lowest-ranked rows</h2><table border='1' cellpadding='4'>"
        "<tr><th>row</th><th>score</th><th>flagged</th><th>prompt</th><th>response</th></tr>"
        f"{rows}</table>" + (f"<h2>Rows the loader rejected</h2><ul>{refused}</ul>" if refused else "")
    )


def esc(value: Any) -> str:
    return html.escape(full_text(value))
