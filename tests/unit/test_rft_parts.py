"""RFT pieces by hand: Bradley–Terry, RLOO advantages, KL estimate, clipped policy loss, reward read-out."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from rewardsft.data import Example, Renderer, collate, tokenize_examples
from rewardsft.losses import (
    kl_penalised_rewards,
    normalise_rewards,
    reward_bt_loss,
    rloo_advantages,
    rloo_policy_loss,
    sequence_kl,
)
from rewardsft.reward import last_token_index, rm_scores, score_examples


def test_bt_loss_by_hand() -> None:
    terms = reward_bt_loss(torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0]))
    expected = [math.log(1 + math.exp(-1.0)), math.log(2.0), math.log(1 + math.exp(2.0))]
    assert terms.loss.tolist() == pytest.approx(expected)
    assert terms.accuracy.tolist() == [1.0, 0.0, 0.0]  # a tie is not a win
    assert terms.margin.tolist() == [1.0, 0.0, -2.0]


def test_rloo_advantages_by_hand() -> None:
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 0.0]])
    # sample 1: 1 - (2+6)/2 = -3; sample 2: 2 - (1+6)/2 = -1.5; sample 3: 6 - (1+2)/2 = 4.5
    assert rloo_advantages(rewards).tolist() == [[-3.0, -1.5, 4.5], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.zeros(2, 1))


def test_kl_estimate_and_penalised_reward_by_hand() -> None:
    policy = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -9.0], [-0.5, -1.5, -0.5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    kl = sequence_kl(policy, ref, mask)
    assert kl.tolist() == pytest.approx([0.5 - 1.0, 0.0 + 1.0 + 0.0])  # masked position ignored
    assert kl_penalised_rewards(torch.tensor([1.0, 1.0]), kl, 0.1).tolist() == pytest.approx([1.05, 0.9])


def test_clipped_policy_loss_by_hand() -> None:
    logps = torch.tensor([0.0, math.log(1.5), math.log(0.5)], requires_grad=True)
    old = torch.zeros(3)
    adv = torch.tensor([1.0, 1.0, -1.0])
    # ratios 1, 1.5, 0.5 -> min(r·A, clip(r)·A): 1, min(1.5, 1.2)=1.2, min(-0.5, -0.8)=-0.8
    loss = rloo_policy_loss(logps, old, adv, clip=0.2)
    assert loss.item() == pytest.approx(-(1.0 + 1.2 - 0.8) / 3)
    loss.backward()
    assert logps.grad is not None
    # Sample 1 is unclipped: d/dlogp of -(r·A)/3 = -1/3. Samples 2 and 3 took the clipped (flat) term: 0.
    assert logps.grad.tolist() == pytest.approx([-1 / 3, 0.0, 0.0])


def test_reward_normalisation() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0])
    whitened = normalise_rewards(rewards, "whiten", None)
    assert float(whitened.mean()) == pytest.approx(0.0, abs=1e-6) and float(whitened.std()) == pytest.approx(1.0)
    assert normalise_rewards(rewards, "none", 2.5).tolist() == [1.0, 2.0, 2.5, 2.5]


def test_last_token_index_left_and_right() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


@pytest.fixture(scope="module")
def reward_model(tokenizer: Any) -> Any:
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoModelForSequenceClassification.from_config(config).eval()


def test_left_and_right_padding_give_the_same_score(tokenizer: Any, reward_model: Any) -> None:
    examples = [Example("What is the capital of Peru?", " Lima."), Example("Hi", " The opposite of hot is cold.")]
    tokenized, _ = tokenize_examples(examples, Renderer(tokenizer), 64, 32)
    right = collate(tokenized, tokenizer.pad_token_id)
    width = right["input_ids"].shape[1]
    left_ids = torch.full_like(right["input_ids"], tokenizer.pad_token_id)
    left_mask = torch.zeros_like(right["attention_mask"])
    for row, ex in enumerate(tokenized):
        left_ids[row, width - len(ex.input_ids) :] = torch.tensor(ex.input_ids)
        left_mask[row, width - len(ex.input_ids) :] = 1
    with torch.no_grad():
        right_scores = rm_scores(reward_model, right["input_ids"], right["attention_mask"])
        left_scores = rm_scores(reward_model, left_ids, left_mask)
        alone = [
            rm_scores(reward_model, torch.tensor([ex.input_ids]), torch.ones(1, len(ex.input_ids))).item()
            for ex in tokenized
        ]
    assert torch.allclose(right_scores, left_scores, atol=1e-5)
    assert right_scores.tolist() == pytest.approx(alone, abs=1e-5)
    # The read-out is the head on the last real token's hidden state, as in HF's own right-padded pooling.
    with torch.no_grad():
        hf = reward_model(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits.squeeze(-1)
    assert torch.allclose(hf, right_scores, atol=1e-5)
    assert score_examples(reward_model, tokenized, 1, tokenizer.pad_token_id) == pytest.approx(alone, abs=1e-5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_exported_reward_model_scores_the_same_under_hf_when_pad_is_eos(
    tokenizer: Any, reward_model: Any, padding_side: str, tmp_path: Any
) -> None:
    """Pythia/zephyr-style tokenizers pad with EOS: HF's forward then reads the token before the closing EOS, and
    `rewardsft score` must read the same one, or the exported reward_model/ scores differently elsewhere."""
    import copy

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rewardsft.reward import save_reward_model
    from rewardsft.scoring import RewardScorer

    eos_padded = copy.deepcopy(tokenizer)
    eos_padded.pad_token = eos_padded.eos_token
    model = copy.deepcopy(reward_model)
    model.config.pad_token_id = eos_padded.pad_token_id
    save_reward_model(tmp_path / "rm", model, eos_padded)

    pairs = [("What is the capital of Peru?", " Lima."), ("Hi", " The opposite of hot is cold. Hello!")]
    ours = RewardScorer(tmp_path / "rm").score(pairs)
    hf_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "rm"))
    hf_tokenizer.padding_side = padding_side
    hf_model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    scorer = RewardScorer(tmp_path / "rm")
    examples = [tokenize_examples([Example(p, r)], scorer.renderer, 2048, 1024)[0][0] for p, r in pairs]
    assert all(ex.input_ids[-1] == eos_padded.eos_token_id for ex in examples)
    batch = hf_tokenizer.pad({"input_ids": [ex.input_ids for ex in examples]}, return_tensors="pt")
    with torch.no_grad():
        hf = hf_model(**batch).logits.squeeze(-1)
    assert hf.tolist() == pytest.approx(ours, abs=1e-5)


def test_whitening_with_the_rounds_moments_equals_whitening_the_whole_round() -> None:
    whole = torch.tensor([1.0, 2.0, 4.0, 8.0, -1.0, 0.5])
    halves = whole[:3], whole[3:]
    moments = (float(whole.mean()), float(whole.std()))
    joined = torch.cat([normalise_rewards(h, "whiten", None, moments) for h in halves])
    assert torch.allclose(joined, normalise_rewards(whole, "whiten", None), atol=1e-6)
    assert not torch.allclose(torch.cat([normalise_rewards(h, "whiten", None) for h in halves]), joined, atol=1e-3)
