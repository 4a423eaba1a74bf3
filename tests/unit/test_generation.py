"""Generation samples from π_θ alone (our settings, not the checkpoint's) and stops at every end-of-turn id."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from rewardsft.config import GenerationConfig
from rewardsft.data import Renderer
from rewardsft.data.tokenize import render_prompt_ids
from rewardsft.generation import end_of_turn_ids, generate
from rewardsft.tiny import tiny_model


@pytest.fixture
def prompts(tokenizer: Any) -> list[list[int]]:
    renderer = Renderer(tokenizer)
    texts = ["What is the capital of Peru?", "Hi", "What is one plus two?", "Name a colour."]
    return [render_prompt_ids([{"role": "user", "content": t}], renderer) for t in texts]


@pytest.mark.parametrize("do_sample", [True, False])
def test_a_checkpoints_generation_config_does_not_change_the_samples(
    tokenizer: Any, prompts: list[list[int]], do_sample: bool
) -> None:
    model = tiny_model(tokenizer, hidden_size=32, seed=1)
    shipped = copy.deepcopy(model)
    # What some checkpoints ship: these would silently reshape the distribution IRFT/RFT sample from.
    shipped.generation_config.repetition_penalty = 50.0
    shipped.generation_config.no_repeat_ngram_size = 1
    shipped.generation_config.suppress_tokens = list(range(5, 200))
    cfg = GenerationConfig(max_new_tokens=12, do_sample=do_sample, batch_size=4)
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_ids": [tokenizer.eos_token_id], "seed": 3}
    assert generate(shipped, prompts, cfg, **kwargs) == generate(model, prompts, cfg, **kwargs)
    assert shipped.generation_config.repetition_penalty == 50.0  # restored afterwards


def test_end_of_turn_ids_cover_eos_the_model_config_and_the_template_turn_end(tokenizer: Any) -> None:
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    unk = tokenizer.convert_tokens_to_ids("<|unk|>")
    # A tokenizer whose EOS is not the template's turn end (as in base models given a ChatML template).
    other_eos = copy.deepcopy(tokenizer)
    other_eos.eos_token = "<|unk|>"
    model = tiny_model(tokenizer, hidden_size=32)
    model.generation_config.eos_token_id = [im_end, 7]
    assert end_of_turn_ids(Renderer(other_eos), model) == [unk, im_end, 7]
    assert end_of_turn_ids(Renderer(tokenizer)) == [im_end]


def test_generation_stops_at_any_end_of_turn_id(tokenizer: Any, prompts: list[list[int]]) -> None:
    model = tiny_model(tokenizer, hidden_size=32, seed=2)
    cfg = GenerationConfig(max_new_tokens=12, do_sample=False, batch_size=4)
    free = generate(model, prompts, cfg, pad_id=tokenizer.pad_token_id, eos_ids=[-1], seed=0)
    stop = free[0].response_ids[3]  # declare the 4th greedy token an end of turn: generation must stop there
    cut = generate(model, prompts, cfg, pad_id=tokenizer.pad_token_id, eos_ids=[-1, stop], seed=0)
    assert cut[0].stopped and cut[0].response_ids[-1] == stop
    assert len(cut[0].response_ids) == free[0].response_ids.index(stop) + 1


def test_demonstrations_end_where_generations_stop_when_eos_is_not_the_turn_end(tokenizer: Any) -> None:
    """Qwen2.5-base/Phi-3 style: the template closes turns with <|im_end|>\\n but the tokenizer's EOS is another
    token. A demonstration must end at the turn end like a generation does, or a reward model could tell them
    apart by the last token alone."""
    from rewardsft.data import Example, tokenize_examples

    other_eos = copy.deepcopy(tokenizer)
    other_eos.eos_token = "<|unk|>"
    renderer = Renderer(other_eos)
    im_end = other_eos.convert_tokens_to_ids("<|im_end|>")
    demo = tokenize_examples([Example([{"role": "user", "content": "Hi"}], "Hello there.")], renderer, 64, 32)[0][0]
    assert demo.response_ids[-1] == im_end and demo.response_ids.count(im_end) == 1
    assert other_eos.eos_token_id not in demo.response_ids
    stops = end_of_turn_ids(renderer)
    assert demo.response_ids[-1] in stops
    # A generation that reproduced the demonstration token by token would stop exactly there.
    from rewardsft.generation import cut_at_eos

    assert cut_at_eos([*demo.response_ids, 5, 6], stops).response_ids == demo.response_ids


def test_truncation_warning_fires_only_when_nearly_every_sample_hit_the_cap() -> None:
    from rewardsft.generation import truncation_warning

    assert truncation_warning({"gen/max_tokens_share": 0.5}, 12) is None
    warning = truncation_warning({"gen/max_tokens_share": 1.0}, 12)
    assert warning is not None and "generation.max_new_tokens=12" in warning


@pytest.mark.parametrize("do_sample", [True, False])
def test_static_cache_samples_what_the_dynamic_cache_samples(
    tokenizer: Any, prompts: list[list[int]], do_sample: bool
) -> None:
    """``generation.cache=static`` is a speed setting only: same seed, same left-padded batches, same samples."""
    model = tiny_model(tokenizer, hidden_size=32, seed=1)
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_ids": [tokenizer.eos_token_id], "seed": 3}
    dynamic, static = (
        generate(
            model, prompts, GenerationConfig(max_new_tokens=12, do_sample=do_sample, batch_size=4, cache=c), **kwargs
        )
        for c in ("dynamic", "static")
    )
    assert static == dynamic
    assert any(len(g.response_ids) > 1 for g in dynamic)


def test_bf16_generation_samples_from_a_rounded_copy_and_leaves_the_policy_alone(
    tokenizer: Any, prompts: list[list[int]]
) -> None:
    model = tiny_model(tokenizer, hidden_size=32, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    kwargs = {"pad_id": tokenizer.pad_token_id, "eos_ids": [tokenizer.eos_token_id], "seed": 3}
    cfg = GenerationConfig(max_new_tokens=12, batch_size=4, dtype="bfloat16")
    first, again = generate(model, prompts, cfg, **kwargs), generate(model, prompts, cfg, **kwargs)
    assert first == again and len(first) == len(prompts)  # seeded like fp32 generation
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in model.named_parameters())
    # Greedy: the rounded copy decodes like the policy on most prompts (a random tiny model has close logits).
    greedy = {"max_new_tokens": 4, "do_sample": False, "batch_size": 4}
    fp32 = generate(model, prompts, GenerationConfig(**greedy), **kwargs)
    bf16 = generate(model, prompts, GenerationConfig(**greedy, dtype="bfloat16"), **kwargs)
    assert sum(a.response_ids[0] == b.response_ids[0] for a, b in zip(fp32, bf16, strict=True)) >= len(prompts) // 2
