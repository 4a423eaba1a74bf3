"""Shared fixtures: a tokenizer trained in-process and tiny random models (no hub, no network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rewardsft.data.builtin import builtin_rows
from rewardsft.tiny import train_tokenizer, write_tiny_model


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """ChatML-style template, EOS <|im_end|>, adds BOS (like Llama tokenizers)."""
    from rewardsft.data.builtin import builtin_corpus

    return train_tokenizer(builtin_corpus(), vocab_size=400, add_bos=True)


@pytest.fixture(scope="session")
def plain_tokenizer() -> Any:
    """No chat template and no BOS (like GPT-NeoX base tokenizers)."""
    from rewardsft.data.builtin import builtin_corpus

    return train_tokenizer(builtin_corpus(), vocab_size=400, add_bos=False, chat_template=None)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("llama"), arch="llama", hidden_size=32, layers=2)


@pytest.fixture(scope="session")
def neox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(
        tmp_path_factory.mktemp("neox"), arch="gpt_neox", hidden_size=32, layers=2, chat_template=False
    )


@pytest.fixture(scope="session")
def builtin_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in builtin_rows()))
    return path


@pytest.fixture(scope="session")
def split_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The built-in rows as (train: 3/4, held-out: 1/4) JSONL files."""
    from rewardsft.data.builtin import builtin_rows

    rows = builtin_rows()
    folder = tmp_path_factory.mktemp("split-data")
    train = write_jsonl(folder / "train.jsonl", rows[::4] + rows[1::4] + rows[2::4])
    return train, write_jsonl(folder / "eval.jsonl", rows[3::4])


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path
