"""Sample responses from a policy with exactly the prompt ids used in training.

Prompts come from :func:`rewardsft.data.tokenize.render_prompt_ids` (via ``TokenizedExample.prompt_ids``),
so generation and training can never disagree about the chat template (SPIN issue #33).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewardsft.config import GenerationConfig
from rewardsft.data.collate import collate_prompts


@dataclass(frozen=True)
class Generation:
    """One sampled response: its token ids (EOS kept when the model stopped) and whether it hit the cap."""

    response_ids: list[int]
    stopped: bool
    """True when the model emitted EOS; False when ``max_new_tokens`` cut it."""


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    *,
    pad_id: int,
    eos_ids: Sequence[int],
    seed: int,
) -> list[Generation]:
    """Sample one response per prompt, batched with left padding and the KV cache.

    Seeded and side-effect free: the global RNG and the model's train/eval mode are restored afterwards.
    Prompts are processed longest first (less padding) and returned in input order.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: dict[int, Generation] = {}
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            for start in range(0, len(order), cfg.batch_size):
                batch_idx = order[start : start + cfg.batch_size]
                outputs = _generate_batch(model, [prompts[i] for i in batch_idx], cfg, pad_id, eos_ids, device)
                results.update(zip(batch_idx, outputs, strict=True))
    finally:
        model.train(was_training)
    return [results[i] for i in range(len(prompts))]


def _generate_batch(
    model: Any,
    prompts: list[Sequence[int]],
    cfg: GenerationConfig,
    pad_id: int,
    eos_ids: Sequence[int],
    device: torch.device,
) -> list[Generation]:
    batch = {k: v.to(device) for k, v in collate_prompts(prompts, pad_id).items()}
    sampling: dict[str, Any] = {"do_sample": cfg.do_sample}
    if cfg.do_sample:
        sampling.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    out = model.generate(
        **batch,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids),
        use_cache=True,
        **sampling,
    )
    new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
    return [cut_at_eos(row, eos_ids) for row in new_tokens]


def cut_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> Generation:
    """Keep tokens up to and including the first EOS (padding after it is dropped)."""
    for pos, token in enumerate(tokens):
        if token in eos_ids:
            return Generation(list(tokens[: pos + 1]), stopped=True)
    return Generation(list(tokens), stopped=False)


def generation_stats(generations: Sequence[Generation], demo_responses: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean length, share identical to the demonstration (zero-gradient pairs), share cut by the cap."""
    n = max(len(generations), 1)
    return {
        "gen/mean_length": sum(len(g.response_ids) for g in generations) / n,
        "gen/identical_share": sum(
            list(g.response_ids) == list(d) for g, d in zip(generations, demo_responses, strict=True)
        )
        / n,
        "gen/max_tokens_share": sum(not g.stopped for g in generations) / n,
    }
