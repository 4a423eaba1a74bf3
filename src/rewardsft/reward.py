"""The explicit reward model r_φ: one read-out used in training, scoring, best-of-n and evaluation.

The score of (prompt, response) is the scalar head applied to the hidden state of the last token of the rendered
prompt+response that is attended and is not the pad id: exactly the token Hugging Face's own
``...ForSequenceClassification`` forward reads, so the exported ``reward_model/`` scores the same under
``AutoModelForSequenceClassification``. Usually that is the EOS closing the response; when the tokenizer pads
with its EOS (Pythia, zephyr, every tokenizer without a pad token) it is the token before it. Left and right
padding give the same score. (The official RFT code reads rewards differently in training and RL.)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rewardsft.data import TokenizedExample
from rewardsft.data.collate import batch_on, block_visibility, collate_branches
from rewardsft.errors import ConfigError
from rewardsft.models import block_attention_mask, block_mask_refusal, eval_mode, original_dropout_config


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last position whose mask is 1 (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


def read_out_index(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """(B,) position the reward is read at: the last attended token that is not ``pad_id`` (HF's rule)."""
    readable = attention_mask.bool()
    if pad_id is not None:
        readable = readable & (input_ids != pad_id)
    return last_token_index(readable)


def rm_scores(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) reward of each row: the score head at :func:`read_out_index`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, read_out_index(input_ids, attention_mask, base.config.pad_token_id)]
    return base.score(last).squeeze(-1).float()  # type: ignore[no-any-return]


def shared_rm_scores(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(G·K,) rewards of the K responses of each :func:`rewardsft.data.collate.collate_branches` group, response
    k of group g at g·K + k: the same score head at the same token as a row of its own (:func:`rm_scores`), the
    prompt's hidden states computed once for all K."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    mask = block_attention_mask(base, block_visibility(batch["document"], batch["branch"]))
    hidden = backbone(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], use_cache=False
    ).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    index = (batch["row_of"][:, None] * hidden.shape[1] + batch["read_out"]).reshape(-1)  # (G·K,) in flat rows
    return base.score(flat.index_select(0, index)).squeeze(-1).float()  # type: ignore[no-any-return]


@torch.no_grad()
def shared_rm_probe(model: Any) -> float:
    """Largest |reward| difference between a synthetic [prompt | first | second] row and the two sequences scored
    on their own: ~0 when the reward model applies the mask and positions as given."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    draw = torch.randint(1, config.vocab_size, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    ids = [t for t in draw if t != pad][:15]
    # The third response is closed by the pad id (tokenizers that pad with EOS): read at the token before it.
    prompt, responses = ids[:6], [ids[6:11], ids[11:], [*ids[11:13], pad]]
    device = next(model.parameters()).device
    with eval_mode(model):
        batch = {k: v.to(device) for k, v in collate_branches([(prompt, responses)], pad).items()}
        shared = shared_rm_scores(model, batch)
        alone = batch_on([TokenizedExample(prompt, r) for r in responses], pad, device)
        separate = rm_scores(model, alone["input_ids"], alone["attention_mask"])
    return float((shared - separate).abs().max())


def shared_rm_problem(model: Any) -> str | None:
    """Why the reward model would not score a shared row as its rows on their own (by its config, then by
    :func:`shared_rm_probe`), or None when it would."""
    problem = block_mask_refusal(model)
    if problem is not None:
        return problem
    gap = shared_rm_probe(model)
    if gap > (1e-3 if next(model.parameters()).dtype == torch.float32 else 0.05):
        return f"needs a reward model that applies a custom attention mask and positions (a probe differs by {gap:.3g})"
    return None


def check_shared_rm(model: Any, setting: str, instead: str) -> None:
    """Refuse ``setting`` for a reward model with a :func:`shared_rm_problem`."""
    problem = shared_rm_problem(model)
    if problem is not None:
        raise ConfigError(f"{setting}: the reward model {problem}: {instead}")


def load_reward_model(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    pad_token_id: int | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Any:
    """An ``AutoModelForSequenceClassification`` with one label (a fresh head when ``path`` is a causal LM)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # A causal LM loads with its LM head unused and a new score head: expected, so keep the load report quiet.
    revision_kwargs = {"revision": revision} if revision else {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype, trust_remote_code=trust_remote_code, **revision_kwargs
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
    device = next(model.parameters()).device
    scores: list[float] = []
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = batch_on(examples[start : start + batch_size], pad_id, device)
            scores += rm_scores(model, batch["input_ids"], batch["attention_mask"]).tolist()
    return scores


def save_reward_model(out: Path, reward_model: Any, tokenizer: Any) -> None:
    """``AutoModelForSequenceClassification``-loadable (LoRA merged) with the tokenizer; ``config.pad_token_id``
    is the tokenizer's pad id, which is what HF's forward needs to find the read-out token."""
    import copy

    model = reward_model
    if hasattr(model, "peft_config"):
        model = copy.deepcopy(model).merge_and_unload()
    model.config.pad_token_id = tokenizer.pad_token_id
    with original_dropout_config(model):
        model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
