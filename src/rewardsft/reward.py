"""The explicit reward model r_φ: one read-out used in training, scoring, best-of-n and evaluation.

The score of (prompt, response) is the scalar head applied to the hidden state of the LAST REAL TOKEN of the
rendered prompt+response (the EOS that closes the response), found from the attention mask, so left and
right padding give the same score. (The official RFT code reads rewards differently in training and RL.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rewardsft.data import TokenizedExample, collate
from rewardsft.errors import ConfigError


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last position whose mask is 1 (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


def rm_scores(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) reward of each row: the score head at the last real token."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_token_index(attention_mask)]
    return base.score(last).squeeze(-1).float()  # type: ignore[no-any-return]


def load_reward_model(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    pad_token_id: int | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """An ``AutoModelForSequenceClassification`` with one label (a fresh head when ``path`` is a causal LM)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # A causal LM loads with its LM head unused and a new score head: expected, so keep the load report quiet.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"could not load the reward model {str(path)!r}: {err}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model.to(device)


@torch.no_grad()
def score_examples(model: Any, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int) -> list[float]:
    """Reward of every (prompt, response), batched; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        scores += rm_scores(model, batch["input_ids"].to(device), batch["attention_mask"].to(device)).tolist()
    model.train(was_training)
    return scores
