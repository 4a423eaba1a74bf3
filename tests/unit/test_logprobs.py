import math
from typing import Any

import pytest
import torch

from rewardsft.data import IGNORE_INDEX, Example, Renderer, collate, tokenize_examples
from rewardsft.logprobs import TokenLogps, model_token_logps, sequence_logps, token_logps
from rewardsft.losses import sft_nll
from rewardsft.tiny import tiny_model


def naive_sequence_logp(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """One sequence, loops and math.log: log p of every non-ignored label given the tokens before it."""
    total = 0.0
    for t in range(1, labels.shape[0]):
        if labels[t] == IGNORE_INDEX:
            continue
        probs = torch.softmax(logits[t - 1].double(), dim=-1)
        total += math.log(float(probs[labels[t]]))
    return total


def test_token_logps_match_naive_loop() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[:, :3] = IGNORE_INDEX
    labels[1, 5:] = IGNORE_INDEX
    tokens = token_logps(logits, labels)
    assert tokens.logps.shape == (3, 6) and tokens.mask.shape == (3, 6)
    for row in range(3):
        assert float(sequence_logps(tokens)[row]) == pytest.approx(
            naive_sequence_logp(logits[row], labels[row]), abs=1e-5
        )
    assert (tokens.logps[~tokens.mask] == 0).all()
    n_tokens = tokens.mask.sum(-1).float()
    assert torch.allclose(sequence_logps(tokens, "mean"), sequence_logps(tokens) / n_tokens)


def test_hand_computed_two_token_vocabulary() -> None:
    # Uniform logits over 2 tokens: every response token has log p = log 0.5.
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 0]])
    tokens = token_logps(logits, labels)
    assert float(sequence_logps(tokens)) == pytest.approx(2 * math.log(0.5))
    assert float(sequence_logps(tokens, "mean")) == pytest.approx(math.log(0.5))
    assert float(sft_nll(tokens)) == pytest.approx(math.log(2))


def test_sft_nll_is_token_weighted() -> None:
    logps = torch.tensor([[-1.0, -3.0, 0.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert float(sft_nll(TokenLogps(logps, mask))) == pytest.approx(6.0 / 3)


def test_empty_rows_give_zero_not_nan() -> None:
    tokens = TokenLogps(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert sequence_logps(tokens, "mean").tolist() == [0.0, 0.0]
    assert float(sft_nll(tokens)) == 0.0


def test_model_logps_do_not_depend_on_padding(tokenizer: Any) -> None:
    model = tiny_model(tokenizer, hidden_size=32).eval()
    examples = [Example("What is the capital of Peru?", " Lima."), Example("Hi", " The opposite of hot is cold.")]
    tokenized, _ = tokenize_examples(examples, Renderer(tokenizer), 64, 32)
    batch = collate(tokenized, tokenizer.pad_token_id)
    with torch.no_grad():
        batched = sequence_logps(model_token_logps(model, **batch))
        for row, ex in enumerate(tokenized):
            single = collate([ex], tokenizer.pad_token_id)
            alone = sequence_logps(model_token_logps(model, **single))
            logits = model(input_ids=single["input_ids"]).logits[0]
            assert float(batched[row]) == pytest.approx(float(alone[0]), abs=1e-4)
            assert float(alone[0]) == pytest.approx(naive_sequence_logp(logits, single["labels"][0]), abs=1e-4)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="disagree"):
        token_logps(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))


def test_sft_nll_with_a_step_token_count_sums_to_the_step_mean() -> None:
    # Two micro-batches of 3 and 1 response tokens: each divided by the step's 4 tokens, they add up to the
    # token mean over the step (6 + 2) / 4, not to the mean of the micro-batch means (2 + 2) / 2.
    first = TokenLogps(torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[True, True, True]]))
    second = TokenLogps(torch.tensor([[-2.0, 0.0, 0.0]]), torch.tensor([[True, False, False]]))
    total = sft_nll(first, n_tokens=4) + sft_nll(second, n_tokens=4)
    assert float(total) == pytest.approx(8.0 / 4)
