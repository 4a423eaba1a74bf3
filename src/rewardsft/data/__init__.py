"""Data pipeline: load rows -> parse formats -> render + tokenise + mask -> collate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from rewardsft.data.collate import collate, collate_prompts
from rewardsft.data.formats import DataError, Example, parse_rows
from rewardsft.data.loading import load_rows
from rewardsft.data.tokenize import (
    IGNORE_INDEX,
    Renderer,
    RenderSettings,
    TokenizedExample,
    TokenizeStats,
    tokenize_example,
    tokenize_examples,
)

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "Example",
    "LoadedSplit",
    "PairSplit",
    "RenderSettings",
    "Renderer",
    "TokenizeStats",
    "TokenizedExample",
    "collate",
    "collate_prompts",
    "load_examples",
    "load_pairs",
    "load_split",
    "parse_rows",
    "tokenize_examples",
]


@dataclass
class LoadedSplit:
    source: str
    examples: list[Example]
    tokenized: list[TokenizedExample]
    stats: TokenizeStats


def load_examples(path: str, split: str, fmt: str = "auto", max_rows: int | None = None) -> tuple[list[Example], str]:
    """Load and validate every row (raises DataError before any training starts)."""
    rows, source = load_rows(path, split, max_rows)
    return parse_rows(rows, source, fmt), source


def load_split(
    path: str,
    split: str,
    renderer: Renderer,
    *,
    fmt: str = "auto",
    max_length: int,
    max_prompt_length: int,
    max_rows: int | None = None,
) -> LoadedSplit:
    examples, source = load_examples(path, split, fmt, max_rows)
    tokenized, stats = tokenize_examples(examples, renderer, max_length, max_prompt_length)
    if not tokenized:
        raise DataError(f"{source}: every row was skipped ({stats.summary()})")
    return LoadedSplit(source, examples, tokenized, stats)


@dataclass
class PairSplit:
    """Preference pairs tokenised like training examples: ``chosen[i]`` and ``rejected[i]`` share a prompt."""

    source: str
    chosen: list[TokenizedExample]
    rejected: list[TokenizedExample]
    skipped: int
    """Rows whose either side had no room left for a response token."""
    pair_ids: list[str]
    """A short hash of each kept pair's texts (prompt, chosen, rejected): the same pair in any evaluation."""


def load_pairs(
    path: str, split: str, renderer: Renderer, *, max_length: int, max_prompt_length: int, max_rows: int | None = None
) -> PairSplit:
    """Chosen and rejected sides of every preference row (for the gap evaluation and RFT's preference mix)."""
    examples, source = load_examples(path, split, "chosen_rejected", max_rows)
    chosen, rejected, pair_ids, skipped = [], [], [], 0
    for index, ex in enumerate(examples):
        if ex.rejected is None:
            raise DataError(f"{source}: row {index + 1}: field 'rejected': missing")
        c, _, _ = tokenize_example(ex, renderer, max_length, max_prompt_length, index)
        r, _, _ = tokenize_example(Example(ex.prompt, ex.rejected), renderer, max_length, max_prompt_length, index)
        if c is None or r is None:
            skipped += 1
            continue
        chosen.append(c)
        rejected.append(r)
        text = json.dumps([ex.prompt, ex.response, ex.rejected], sort_keys=True, ensure_ascii=False)
        pair_ids.append(hashlib.sha1(text.encode()).hexdigest()[:12])
    return PairSplit(source, chosen, rejected, skipped, pair_ids)
