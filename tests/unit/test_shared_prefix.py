"""The shared-prefix pair row ([prompt | demonstration | generation], irft.pair_forward=shared): its layout worked
by hand, and its log-probs equal two separate forwards on both tiny architectures and both mask-taking kernels."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from rewardsft.data import IGNORE_INDEX, Example, Renderer, TokenizedExample, tokenize_examples
from rewardsft.data.collate import (
    batch_on,
    block_visibility,
    collate_packed,
    collate_shared,
    pack_rows,
    tightest_packing,
)
from rewardsft.errors import ConfigError
from rewardsft.logprobs import (
    block_mask_probe,
    check_block_mask,
    indexed_token_logps,
    model_token_logps,
    sequence_logps,
)
from rewardsft.losses import sft_nll
from rewardsft.reference import Pair, shared_pair_batch, shared_split_logps
from rewardsft.steps.sft import micro_batch_logps
from rewardsft.tiny import tiny_model


def sharpened(model: Any, factor: float = 8.0) -> Any:
    """A random tiny model barely notices positions (a probe of one without positions differs by 6e-5 nats per
    token); scaling the query and key projections sharpens its attention until a position or mask error shows
    (5e-3 to 0.1 nats per token), so the exactness checks below can fail."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and any(key in name for key in ("q_proj", "k_proj", "query_key_value")):
                param.mul_(factor)
    return model


def visible(batch: dict[str, torch.Tensor], row: int) -> list[list[int]]:
    return block_visibility(batch["document"], batch["branch"])[row].int().tolist()


def test_layout_of_one_row_worked_by_hand() -> None:
    # prompt [11, 12], first response [21, 22, 23], second [31]; one pad on the right (width 6 set by row 2).
    batch = collate_shared([([11, 12], [21, 22, 23], [31]), ([11], [21, 22], [31, 32, 33])], pad_id=0)
    assert batch["input_ids"][0].tolist() == [11, 12, 21, 22, 23, 31]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 2]  # the second response restarts at 2
    assert batch["input_ids"][1].tolist() == [11, 21, 22, 31, 32, 33]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 1, 2, 3]
    # Row 0: token 21 is predicted from position 1 (the prompt's end); 31 too, not from 23 before it.
    assert batch["first_source"][0].tolist() == [1, 2, 3]
    assert batch["first_labels"][0].tolist() == [21, 22, 23]
    assert batch["second_source"][0].tolist() == [1, 0, 0]
    assert batch["second_labels"][0].tolist() == [31, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["second_source"][1].tolist() == [0, 3, 4]
    assert visible(batch, 1) == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],  # the generation sees the prompt and itself, not the demonstration
        [1, 0, 0, 1, 1, 0],
        [1, 0, 0, 1, 1, 1],
    ]


def test_padding_rows_see_only_themselves_and_an_empty_first_response() -> None:
    batch = collate_shared([([5], [6], [7]), ([5, 5], [6, 6], [7, 7])], pad_id=0)
    assert visible(batch, 0)[3:] == [[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]
    empty = collate_shared([([5, 5], [], [7, 8])], pad_id=0)  # the second response follows the prompt at once
    assert empty["position_ids"][0].tolist() == [0, 1, 2, 3] and empty["second_source"][0].tolist() == [1, 2]
    assert empty["first_labels"].shape == (1, 0)
    with pytest.raises(ValueError, match="prompt"):
        collate_shared([([], [6], [7])], pad_id=0)


def test_indexed_logps_match_a_naive_loop() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 9)
    source = torch.tensor([[1, 4, 2], [0, 5, 0]])
    labels = torch.tensor([[3, 8, IGNORE_INDEX], [0, 2, IGNORE_INDEX]])
    tokens = indexed_token_logps(logits, source, labels)
    for row in range(2):
        want = sum(
            math.log(float(torch.softmax(logits[row, int(s)].double(), -1)[int(y)]))
            for s, y in zip(source[row], labels[row], strict=True)
            if y != IGNORE_INDEX
        )
        assert float(sequence_logps(tokens)[row]) == pytest.approx(want, abs=1e-5)
    assert tokens.mask.tolist() == [[True, True, False], [True, True, False]]
    assert (tokens.logps[~tokens.mask] == 0).all()
    with pytest.raises(ValueError):
        indexed_token_logps(logits, source[:, :2], labels)


def pairs_of(tokenizer: Any, max_prompt_length: int = 32) -> list[Pair]:
    demos = [
        Example("What is the capital of Peru, the country in South America?", " The capital of Peru is Lima."),
        Example("Hi", " Hello! How can I help you today?"),
        Example("What is one plus two?", ""),
    ]
    gens = [" Lima is big.", " What is the opposite of hot? It is cold, I think.", " three"]
    tokenized, stats = tokenize_examples(demos, Renderer(tokenizer), 64, max_prompt_length)
    assert (stats.prompt_truncated > 0) == (max_prompt_length < 10)
    return [
        Pair(d, TokenizedExample(d.prompt_ids, tokenizer(g, add_special_tokens=False)["input_ids"], d.index))
        for d, g in zip(tokenized, gens, strict=True)
    ] + [Pair(TokenizedExample(tokenized[0].prompt_ids, [], 3), TokenizedExample(tokenized[0].prompt_ids, [], 3))]


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("max_prompt_length", [32, 4])
def test_shared_row_gives_the_logps_of_two_separate_rows(
    tokenizer: Any, arch: str, attention: str, max_prompt_length: int
) -> None:
    """max_prompt_length=4 cuts the first prompt (truncated prompts share the prefix just the same); the last pair
    has an empty demonstration and an empty generation (a sample cut to nothing by data.max_length)."""
    model = sharpened(tiny_model(tokenizer, arch=arch, hidden_size=32, seed=3)).eval()  # type: ignore[arg-type]
    model.config._attn_implementation = attention
    pairs = pairs_of(tokenizer, max_prompt_length)
    cpu = torch.device("cpu")
    with torch.no_grad():
        batch = shared_pair_batch(pairs, tokenizer.pad_token_id, cpu)
        demo, gen = shared_split_logps(model, batch)
        for tokens, side in ((demo, "demo"), (gen, "gen")):
            separate = model_token_logps(
                model, **batch_on([getattr(p, side) for p in pairs], tokenizer.pad_token_id, cpu)
            )
            assert torch.allclose(sequence_logps(tokens), sequence_logps(separate), atol=1e-5), side
            assert tokens.mask.sum(-1).tolist() == separate.mask.sum(-1).tolist()


def test_shared_prefix_refuses_pairs_and_models_it_would_get_wrong(tokenizer: Any) -> None:
    pairs = pairs_of(tokenizer)
    odd = Pair(pairs[0].demo, TokenizedExample(pairs[1].demo.prompt_ids, [5], 0))
    with pytest.raises(ValueError, match="pair 0"):
        shared_pair_batch([odd], tokenizer.pad_token_id, torch.device("cpu"))
    model = tiny_model(tokenizer, hidden_size=32)
    check_block_mask(model, "irft.pair_forward=shared", "use joint")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match=r"pair_forward=shared needs sdpa or eager attention.*use joint"):
        check_block_mask(model, "irft.pair_forward=shared", "use joint")
    model.config._attn_implementation = "sdpa"
    model.config.sliding_window = 16
    with pytest.raises(ConfigError, match="sliding window"):
        check_block_mask(model, "train.packing", "unpacked")


def test_pack_rows_first_fit_decreasing() -> None:
    assert pack_rows([5, 3, 4, 2, 1], width=5) == [[0], [2, 4], [1, 3]]
    assert pack_rows([7, 2], width=5) == [[0], [1]]  # too long for the width: a row of its own


def test_packed_layout_worked_by_hand() -> None:
    examples = [
        TokenizedExample([11], [12, 13], 0),
        TokenizedExample([21, 22], [23, 24], 1),
        TokenizedExample([31], [], 2),
    ]
    batch = collate_packed(examples, pad_id=0)
    # width 4 (the longest); rows: [example 1], [example 0 | example 2]
    assert batch["input_ids"].tolist() == [[21, 22, 23, 24], [11, 12, 13, 31]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 2, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 23, 24], [IGNORE_INDEX, 12, 13, IGNORE_INDEX]]
    assert visible(batch, 1) == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]
    wide = collate_packed([*examples, TokenizedExample([41], [42, 43, 44, 45], 3)], pad_id=0, width=9)
    # lengths 3, 4, 1, 5: padded 4 x 5 = 20 positions; rows of width 5 (the longest) take 3 x 5 = 15; an even split
    # into two rows (width 7) takes 2 x 7 = 14: [5 | 1] and [4 | 3]
    assert wide["input_ids"].tolist() == [[41, 42, 43, 44, 45, 31, 0], [21, 22, 23, 24, 11, 12, 13]]
    assert wide["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 0], [0, 1, 2, 3, 0, 1, 2]]


def test_tightest_packing_never_computes_more_than_padding() -> None:
    # Six of 25 packed to 128 blindly: rows of 125 and 25, 2 x 125 = 250 positions against 150 padded. Equal
    # lengths have no padding to remove, and a tie keeps the narrower rows (less attention per token).
    assert tightest_packing([25] * 6, 128) == [[i] for i in range(6)]
    assert tightest_packing([40, 10, 30, 20], 50) == [[0, 1], [2, 3]]  # two rows of 50 instead of 4 x 40


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_sft_gives_the_loss_and_gradient_of_unpacked(tokenizer: Any, arch: str, attention: str) -> None:
    examples = [p.demo for p in pairs_of(tokenizer)] + [p.gen for p in pairs_of(tokenizer)]
    base = sharpened(tiny_model(tokenizer, arch=arch, hidden_size=32, seed=4))  # type: ignore[arg-type]
    base.config._attn_implementation = attention
    assert collate_packed(examples, tokenizer.pad_token_id, 64)["input_ids"].shape[0] < len(examples)
    losses, grads = [], []
    for width in (None, 64):
        model = copy.deepcopy(base).train()
        loss = sft_nll(micro_batch_logps(model, examples, tokenizer.pad_token_id, torch.device("cpu"), width))
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4) for n in grads[0])
    assert all(g.abs().sum() > 0 for g in grads[0].values())


class DropsPositions(torch.nn.Module):
    """A model that builds its own positions (as ALiBi models build biases from their own mask)."""

    def __init__(self, inner: Any):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any = None, use_cache: bool = False) -> Any:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


class DropsMask(DropsPositions):
    """A model that ignores a 4-D mask (plain causal attention over the whole row)."""

    def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any = None, use_cache: bool = False) -> Any:
        mask = None if attention_mask is not None and attention_mask.dim() == 4 else attention_mask
        return self.inner(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=use_cache)


@pytest.mark.parametrize("broken", [DropsPositions, DropsMask])
def test_the_probe_refuses_a_model_that_does_not_apply_the_mask_or_positions(tokenizer: Any, broken: Any) -> None:
    model = sharpened(tiny_model(tokenizer, hidden_size=64, seed=1))
    assert block_mask_probe(model) < 1e-5
    assert block_mask_probe(broken(model)) > 2e-3  # the probe's fp32 tolerance is 1e-3
    with pytest.raises(ConfigError, match="probe row differs"):
        check_block_mask(broken(model), "train.packing", "set train.packing=false")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_rows_in_bfloat16(tokenizer: Any, attention: str) -> None:
    """Half precision on both mask paths: eager's additive mask in the weights' dtype, sdpa's boolean one."""
    model = sharpened(tiny_model(tokenizer, hidden_size=64, seed=1)).to(torch.bfloat16).eval()
    model.config._attn_implementation = attention
    check_block_mask(model, "irft.pair_forward=shared", "use joint")
    pairs = pairs_of(tokenizer)
    cpu = torch.device("cpu")
    with torch.no_grad():
        demo, gen = shared_split_logps(model, shared_pair_batch(pairs, tokenizer.pad_token_id, cpu))
        for tokens, side in ((demo, "demo"), (gen, "gen")):
            alone = model_token_logps(model, **batch_on([getattr(p, side) for p in pairs], tokenizer.pad_token_id, cpu))
            per_token = (sequence_logps(tokens) - sequence_logps(alone)).abs() / tokens.mask.sum(-1).clamp(min=1)
            assert per_token.max() < 0.05, side
            assert torch.isfinite(tokens.logps).all()


def test_branches_layout_worked_by_hand() -> None:
    """Three samples behind one prompt (RFT's k samples): each restarts at the prompt's end and sees only it."""
    from rewardsft.data.collate import collate_branches

    batch = collate_branches([([11, 12], [[21, 22], [31], [41, 42, 43]])], pad_id=0)
    assert batch["input_ids"][0].tolist() == [11, 12, 21, 22, 31, 41, 42, 43]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 2, 2, 3, 4]
    assert batch["branch"][0].tolist() == [0, 0, 1, 1, 2, 3, 3, 3]
    assert batch["source"][0].tolist() == [[1, 2, 0], [1, 0, 0], [1, 5, 6]]
    assert batch["labels"][0].tolist() == [[21, 22, IGNORE_INDEX], [31, IGNORE_INDEX, IGNORE_INDEX], [41, 42, 43]]
    assert visible(batch, 0)[5] == [1, 1, 0, 0, 0, 1, 0, 0]  # sample 3 sees the prompt and itself only
    with pytest.raises(ValueError, match="as many responses"):
        collate_branches([([1], [[2]]), ([1], [[2], [3]])], pad_id=0)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_k_samples_behind_one_prompt_give_the_logps_of_separate_rows(tokenizer: Any, arch: str, attention: str) -> None:
    """RFT's rft.rollout_forward=shared reads every sample's per-token log-probs from one row per prompt: the
    same as a row per sample (an empty sample included)."""
    from rewardsft.config import load_config
    from rewardsft.steps.rollout import RolloutSpec, sample_token_logps

    model = sharpened(tiny_model(tokenizer, arch=arch, hidden_size=32, seed=3)).eval()  # type: ignore[arg-type]
    model.config._attn_implementation = attention
    pairs = pairs_of(tokenizer)
    # Three prompts, k = 3 samples each (the demonstration, the generation, and an empty sample).
    gens = [s for p in pairs[:3] for s in (p.demo, p.gen, TokenizedExample(p.demo.prompt_ids, [], p.demo.index))]
    config = load_config("rft", overrides=["rft.samples_per_prompt=3"])
    shared = RolloutSpec.from_config(config, tokenizer.pad_token_id, [], shared=True)
    separate = RolloutSpec.from_config(load_config("rft", overrides=["rft.samples_per_prompt=3"]), shared.pad_id, [])
    cpu = torch.device("cpu")
    with torch.no_grad():
        one, many = (sample_token_logps(model, gens, spec, cpu) for spec in (shared, separate))
    assert torch.allclose(sequence_logps(one), sequence_logps(many), atol=1e-5)
    assert one.mask.sum(-1).tolist() == many.mask.sum(-1).tolist() == [len(g.response_ids) for g in gens]
    assert shared.chunk == 6 and separate.chunk == 8  # whole prompts' samples per micro-batch of train.batch_size=8


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_shared_row_scores_each_response_as_its_own_row(tokenizer: Any, arch: str, attention: str) -> None:
    """RFT's reward step with rft.rollout_forward=shared: [prompt | demonstration | samples] gives every response
    the reward a row of its own gets, read at the same token, also where the pad id closes a response (the
    tokenizers that pad with EOS) or a response is empty (read at the prompt's last token)."""
    import tempfile

    from rewardsft.data.collate import collate_branches
    from rewardsft.reward import load_reward_model, rm_scores, shared_rm_probe, shared_rm_scores

    policy = sharpened(tiny_model(tokenizer, arch=arch, hidden_size=32, seed=3))  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(tmp)
        model = load_reward_model(tmp, torch.device("cpu"), pad_token_id=tokenizer.pad_token_id).eval()
    model.config._attn_implementation = attention
    with torch.no_grad():  # a random head scores ~0 everywhere: make it read the hidden state strongly
        model.score.weight.normal_(0, 5.0, generator=torch.Generator().manual_seed(1))
    pad = tokenizer.pad_token_id
    pairs = pairs_of(tokenizer)[:3]
    rows = [
        (p.demo.prompt_ids, [p.demo.response_ids, p.gen.response_ids, [*p.gen.response_ids, pad], []]) for p in pairs
    ]
    with torch.no_grad():
        shared = shared_rm_scores(model, collate_branches(rows, pad))
        alone = [TokenizedExample(prompt, response) for prompt, responses in rows for response in responses]
        batch = batch_on(alone, pad, torch.device("cpu"))
        separate = rm_scores(model, batch["input_ids"], batch["attention_mask"])
    assert separate.std() > 0.1  # the rewards differ from row to row: the comparison can fail
    assert torch.allclose(shared, separate, atol=1e-4)
    assert shared_rm_probe(model) < 1e-3


def test_rollout_forward_auto_is_shared_on_cpu_where_both_models_take_the_mask(tokenizer: Any) -> None:
    """``rft.rollout_forward=auto``: shared on CPU where the policy and the reward model apply the block mask;
    separate as soon as either would not (asked for explicitly, shared is refused naming the model instead)."""
    import tempfile

    from rewardsft.config import load_config
    from rewardsft.reward import load_reward_model
    from rewardsft.steps.rollout import rollout_forward

    policy = tiny_model(tokenizer, hidden_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(tmp)
        reward_model = load_reward_model(tmp, torch.device("cpu"), pad_token_id=tokenizer.pad_token_id)
    auto, asked = load_config("rft"), load_config("rft", overrides=["rft.rollout_forward=shared"])
    assert rollout_forward(auto, policy, reward_model) == "shared"
    separate = load_config("rft", overrides=["rft.rollout_forward=separate"])
    assert rollout_forward(separate, policy, reward_model) == "separate"
    reward_model.config._attn_implementation = "flash_attention_2"
    assert rollout_forward(auto, policy, reward_model) == "separate"
    with pytest.raises(ConfigError, match="the reward model"):
        rollout_forward(asked, policy, reward_model)
    reward_model.config._attn_implementation = "sdpa"
    policy.config._attn_implementation = "flash_attention_2"
    assert rollout_forward(auto, policy, reward_model) == "separate"
    with pytest.raises(ConfigError, match=r"rft\.rollout_forward=shared"):
        rollout_forward(asked, policy, reward_model)


def test_packed_branch_groups_worked_by_hand() -> None:
    """Two pairs packed into one row of width 9: each pair a document, positions restarting per pair, each
    response read from its own row positions."""
    from rewardsft.data.collate import collate_branches

    batch = collate_branches([([11, 12], [[21], [31, 32]]), ([13], [[22, 23], [33]])], pad_id=0, width=9)
    assert batch["input_ids"].tolist() == [[11, 12, 21, 31, 32, 13, 22, 23, 33]]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 2, 3, 0, 1, 2, 1]
    assert batch["document"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert batch["row_of"].tolist() == [0, 0]
    assert batch["source"][1].tolist() == [[5, 6], [5, 0]]  # the second pair's prompt ends at position 5
    assert visible(batch, 0)[8] == [0, 0, 0, 0, 0, 1, 0, 0, 1]  # its generation sees its prompt and itself only


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_pair_rows_give_the_logps_of_a_row_per_pair(tokenizer: Any, arch: str, attention: str) -> None:
    """IRFT's train.packing with irft.pair_forward=shared: pairs packed several to a row read the same log-probs."""
    model = sharpened(tiny_model(tokenizer, arch=arch, hidden_size=32, seed=3)).eval()  # type: ignore[arg-type]
    model.config._attn_implementation = attention
    pairs = pairs_of(tokenizer)
    cpu = torch.device("cpu")
    with torch.no_grad():
        packed_batch = shared_pair_batch(pairs, tokenizer.pad_token_id, cpu, width=64)
        assert packed_batch["input_ids"].shape[0] < len(pairs)  # packing did put pairs together
        packed = shared_split_logps(model, packed_batch)
        one_each = shared_split_logps(model, shared_pair_batch(pairs, tokenizer.pad_token_id, cpu))
    for a, b in zip(packed, one_each, strict=True):
        assert torch.allclose(sequence_logps(a), sequence_logps(b), atol=1e-5)
        assert a.mask.sum(-1).tolist() == b.mask.sum(-1).tolist()


def test_shared_and_packed_rows_warn_on_a_gpu_only() -> None:
    """The dense 4-D mask was measured faster on CPU only: on CUDA the run says so (FlexAttention not wired)."""
    from rewardsft.logprobs import dense_mask_warning

    assert dense_mask_warning(torch.device("cpu"), "train.packing") is None
    message = dense_mask_warning(torch.device("cuda", 0), "irft.pair_forward=shared")
    assert message is not None and "irft.pair_forward=shared" in message and "FlexAttention" in message
