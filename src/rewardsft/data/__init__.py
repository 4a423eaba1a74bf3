"""Data pipeline: load rows -> parse formats -> render + tokenise + mask -> collate."""

from __future__ import annotations

from dataclasses import dataclass

from rewardsft.data.collate import collate, collate_prompts
from rewardsft.data.formats import DataError, Example, parse_rows
from rewardsft.data.loading import load_rows
from rewardsft.data.tokenize import (
    IGNORE_INDEX,
    Renderer,
    TokenizedExample,
    TokenizeStats,
    tokenize_examples,
)

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "Example",
    "LoadedSplit",
    "Renderer",
    "TokenizeStats",
    "TokenizedExample",
    "collate",
    "collate_prompts",
    "load_examples",
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
