"""Log-probability gap between chosen and rejected continuations (the paper's Figure 1 evaluation).

For each preference pair: log p(chosen | prompt) and log p(rejected | prompt) under the model (sum and
per-token mean, prompt masked, rendered exactly as in training), their gap, and whether chosen is above
rejected. With a reference model also the implicit-reward margin β·[(log π(c) − log π(r)) − (log π_ref(c) −
log π_ref(r))]. Batched: rows are sorted by length so padding stays small, and where the model's attention takes
a block mask each pair is one row, ``[prompt | chosen | rejected]``, the prompt computed once for both
(:func:`rewardsft.reference.shared_split_logps`; the same log-probs).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import ModelConfig
from rewardsft.data import Renderer, TokenizedExample, load_pairs
from rewardsft.data.collate import batch_on
from rewardsft.eval.stats import bootstrap_ci
from rewardsft.layout import SUMMARY_FILE, rendering_for
from rewardsft.logprobs import block_mask_problem, model_token_logps, sequence_logps
from rewardsft.losses import irft_loss
from rewardsft.models import eval_mode, load_causal_lm, load_tokenizer
from rewardsft.reference import Pair, shared_pair_batch, shared_split_logps


@dataclass
class GapSettings:
    split: str = "train"
    beta: float = 0.1
    batch_size: int = 16
    max_rows: int | None = None
    bootstrap: int = 1000
    seed: int = 0
    paired_metrics: tuple[str, ...] | None = None
    """Per-pair columns ``eval compare`` compares (None: its default, ``rewardsft.eval.paired.GAP_METRICS``); the
    study adds ``chosen_logp_mean``, the held-out log-likelihood per token."""


@torch.no_grad()
def sequence_logp_table(model: Any, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int) -> torch.Tensor:
    """(N, 2) [sum, mean] response log-probs of every example, in input order."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out = torch.zeros(len(examples), 2, dtype=torch.float64)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            tokens = model_token_logps(model, **batch_on([examples[i] for i in idx], pad_id, device))
            out[idx, 0] = sequence_logps(tokens, "sum").double().cpu()
            out[idx, 1] = sequence_logps(tokens, "mean").double().cpu()
    return out


@torch.no_grad()
def pair_logp_table(
    model: Any, chosen: Sequence[TokenizedExample], rejected: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> torch.Tensor:
    """:func:`sequence_logp_table` of ``chosen + rejected`` ((2N, 2), chosen first), read from one shared-prefix
    row per pair (``batch_size // 2`` pairs per forward) when the model's attention takes the mask and every pair
    shares its prompt; else from two rows per pair."""
    pairs = [Pair(c, r) for c, r in zip(chosen, rejected, strict=True)]
    if block_mask_problem(model) is not None or any(p.demo.prompt_ids != p.gen.prompt_ids for p in pairs):
        return sequence_logp_table(model, [*chosen, *rejected], batch_size, pad_id)
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].demo.input_ids) + len(pairs[i].gen.response_ids))
    out = torch.zeros(2 * len(pairs), 2, dtype=torch.float64)
    step = max(batch_size // 2, 1)
    with eval_mode(model):
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            both = shared_split_logps(model, shared_pair_batch([pairs[i] for i in idx], pad_id, device))
            for offset, tokens in zip((0, len(pairs)), both, strict=True):
                rows = [offset + i for i in idx]
                out[rows, 0] = sequence_logps(tokens, "sum").double().cpu()
                out[rows, 1] = sequence_logps(tokens, "mean").double().cpu()
    return out


def logprob_gap(
    model_path: str,
    data: str,
    out: Path | None = None,
    ref_model: str | None = None,
    settings: GapSettings | None = None,
    render: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the gap; writes ``summary.json`` and ``per_example.csv`` under ``out`` when given.

    The pairs are rendered as ``model_path`` trained (a run's ``config.yaml``) or by the ``render`` flags
    (:func:`rewardsft.layout.rendering_for`); the reference model scores the very same token ids.
    """
    settings = settings or GapSettings()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = rendering_for(model_path, **(render or {}))
    rendering = resolved.settings
    cfg = ModelConfig(name_or_path=resolved.path)
    tokenizer = load_tokenizer(cfg)
    pairs = load_pairs(
        data,
        settings.split,
        Renderer.from_settings(tokenizer, rendering),
        max_length=rendering.max_length,
        max_prompt_length=rendering.max_prompt_length,
        max_rows=settings.max_rows,
    )
    chosen, source, skipped = pairs.chosen, pairs.source, pairs.skipped
    pad = tokenizer.pad_token_id
    model = load_causal_lm(cfg, device)
    table = pair_logp_table(model, pairs.chosen, pairs.rejected, settings.batch_size, pad)
    del model
    ref_table = None
    if ref_model is not None:
        ref = load_causal_lm(ModelConfig(name_or_path=rendering_for(ref_model).path), device)
        ref_table = pair_logp_table(ref, pairs.chosen, pairs.rejected, settings.batch_size, pad)
    rows = per_example_rows(table, ref_table, len(chosen), settings.beta, [c.index for c in chosen], pairs.pair_ids)
    summary = summarise(rows, settings, ref_table is not None)
    summary.update(
        {
            "kind": "logprob_gap",
            "model": model_path,
            "ref_model": ref_model,
            "data": source,
            "pairs": len(rows),
            "skipped": skipped,
        }
    )
    if out is not None:
        write_gap(out, summary, rows)
    return summary


def per_example_rows(
    table: torch.Tensor,
    ref_table: torch.Tensor | None,
    n: int,
    beta: float,
    indices: list[int],
    pair_ids: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per pair: its data row, its ``pair_id`` (for paired comparisons), log-probs, gap and margin."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        c_sum, c_mean = table[i].tolist()
        r_sum, r_mean = table[n + i].tolist()
        row: dict[str, Any] = {
            "row": indices[i] + 1,
            "pair_id": pair_ids[i] if pair_ids is not None else "",
            "chosen_logp": c_sum,
            "rejected_logp": r_sum,
            "chosen_logp_mean": c_mean,
            "rejected_logp_mean": r_mean,
            "gap": c_sum - r_sum,
            "gap_mean": c_mean - r_mean,
            "correct": float(c_sum > r_sum),
        }
        rows.append(row)
    if ref_table is not None:
        # The same margin IRFT trains on, with chosen in the demonstration's place and rejected in the generation's.
        margins = irft_loss(table[:n, 0], table[n:, 0], ref_table[:n, 0], ref_table[n:, 0], beta).margin
        for row, margin in zip(rows, margins.tolist(), strict=True):
            row["implicit_margin"] = margin
            row["implicit_correct"] = float(margin > 0)
    return rows


def summarise(rows: list[dict[str, float]], settings: GapSettings, with_ref: bool) -> dict[str, Any]:
    def stat(key: str) -> dict[str, Any]:
        values = [r[key] for r in rows]
        lo, hi = bootstrap_ci(values, settings.bootstrap, seed=settings.seed)
        return {"mean": sum(values) / max(len(values), 1), "ci95": [lo, hi]}

    keys = ["gap", "gap_mean", "correct", "chosen_logp", "rejected_logp"]
    keys += ["implicit_margin", "implicit_correct"] if with_ref else []
    summary: dict[str, Any] = {key: stat(key) for key in keys}
    summary["accuracy"] = summary.pop("correct")
    if with_ref:
        summary["implicit_accuracy"] = summary.pop("implicit_correct")
    summary["settings"] = vars(settings)
    if settings.paired_metrics is not None:
        summary["paired_metrics"] = list(settings.paired_metrics)
    return summary


def write_gap(out: Path, summary: dict[str, Any], rows: list[dict[str, float]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "per_example.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["row"])
        writer.writeheader()
        writer.writerows(rows)
    # The summary last: its presence says the evaluation is complete (the study skips finished ones).
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
