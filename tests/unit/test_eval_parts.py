"""Evaluation pieces: the gap on a hand-built model, bootstrap intervals, win-rate ties, judge loaders."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from rewardsft.errors import ConfigError
from rewardsft.eval.judges import load_judge
from rewardsft.eval.logprob_gap import GapSettings, pair_logp_table, per_example_rows, sequence_logp_table, summarise
from rewardsft.eval.stats import bootstrap_ci
from rewardsft.eval.win_rate import WinRateSettings, outcome
from rewardsft.eval.win_rate import summarise as summarise_wins


class BigramModel(torch.nn.Module):
    """A causal LM whose next-token distribution depends only on the current token: log-probs by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)  # (V, V) logits of the next token given the current one
        self.training = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False) -> Any:
        class Out:
            logits = self.table[input_ids]

        return Out()


def test_gap_on_a_hand_built_model() -> None:
    from rewardsft.data import TokenizedExample

    # Vocabulary {0: pad, 1, 2, 3}. From any token: p(1) = 1/2, p(2) = 1/4, p(3) = 1/4 (p(0) ~ 0).
    logits = torch.log(torch.tensor([1e-9, 0.5, 0.25, 0.25])).repeat(4, 1)
    model = BigramModel(logits)
    chosen = [TokenizedExample([3], [1, 1]), TokenizedExample([2, 3], [1])]
    rejected = [TokenizedExample([3], [2, 3]), TokenizedExample([2, 3], [1, 1, 1])]
    table = sequence_logp_table(model, chosen + rejected, batch_size=3, pad_id=0)
    half, quarter = math.log(0.5), math.log(0.25)
    assert table[:, 0].tolist() == pytest.approx([2 * half, half, 2 * quarter, 3 * half], abs=1e-6)
    assert table[:, 1].tolist() == pytest.approx([half, half, quarter, half], abs=1e-6)
    ref = table.clone()
    ref[:, 0] -= torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # the reference likes chosen[1] less
    rows = per_example_rows(table, ref, 2, beta=0.5, indices=[0, 1])
    assert [r["gap"] for r in rows] == pytest.approx([2 * half - 2 * quarter, half - 3 * half])
    assert [r["correct"] for r in rows] == [1.0, 1.0]  # the longer rejected answer has the lower summed log-prob
    assert [r["gap_mean"] for r in rows] == pytest.approx([half - quarter, 0.0])
    assert [r["implicit_margin"] for r in rows] == pytest.approx([0.0, 0.5])
    summary = summarise(rows, GapSettings(bootstrap=200), with_ref=True)
    # Row 1's implicit margin is exactly 0: not counted as correct.
    assert summary["accuracy"]["mean"] == 1.0 and summary["implicit_accuracy"]["mean"] == 0.5
    assert summary["gap"]["ci95"][0] <= summary["gap"]["mean"] <= summary["gap"]["ci95"][1]


def test_pair_table_reads_shared_rows_as_two_separate_ones(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gap evaluation's shared-prefix rows give sequence_logp_table's numbers; a model whose attention takes
    no block mask (flash attention, or no transformers config at all) is read from separate rows."""
    import rewardsft.eval.logprob_gap as gap
    from rewardsft.data import Example, Renderer, tokenize_examples
    from rewardsft.tiny import tiny_model

    def tokenized(responses: list[str]) -> list[Any]:
        prompts = ["What is the capital of Peru?", "Hi", "Name a colour.", "Count to three."]
        examples = [Example(p, r) for p, r in zip(prompts, responses, strict=True)]
        return tokenize_examples(examples, Renderer(tokenizer), 64, 32)[0]

    chosen, rejected = tokenized([" Lima.", " Hello!", " Red", " 1 2 3"]), tokenized([" Paris?", " No", " 7", " 3"])
    pad = tokenizer.pad_token_id
    model = tiny_model(tokenizer, hidden_size=32, seed=2)
    separate = sequence_logp_table(model, chosen + rejected, batch_size=3, pad_id=pad)
    assert torch.allclose(pair_logp_table(model, chosen, rejected, batch_size=3, pad_id=pad), separate, atol=1e-5)
    calls: list[int] = []
    monkeypatch.setattr(gap, "sequence_logp_table", lambda *args: calls.append(1) or separate)
    model.config._attn_implementation = "flash_attention_2"
    assert torch.equal(pair_logp_table(model, chosen, rejected, 3, pad), separate) and len(calls) == 1
    pair_logp_table(BigramModel(torch.zeros(4, 4)), chosen, rejected, 3, pad)
    assert len(calls) == 2


def test_bootstrap_interval_on_a_fixed_sample() -> None:
    values = [0.0] * 50 + [1.0] * 50
    lo, hi = bootstrap_ci(values, n_resamples=2000, seed=0)
    # Normal approximation: 0.5 ± 1.96·sqrt(0.25/100) = 0.5 ± 0.098.
    assert lo == pytest.approx(0.402, abs=0.02) and hi == pytest.approx(0.598, abs=0.02)
    assert bootstrap_ci(values, 2000, seed=0) == (lo, hi)  # seeded
    assert bootstrap_ci([3.0] * 10) == (3.0, 3.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_bootstrap_interval_width_matches_the_normal_approximation() -> None:
    values = torch.randn(400, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2.0 + 1.0
    lo, hi = bootstrap_ci(values, n_resamples=2000, seed=0)
    half = 1.96 * float(values.std()) / math.sqrt(len(values))
    assert hi - lo == pytest.approx(2 * half, rel=0.1)
    assert (lo + hi) / 2 == pytest.approx(float(values.mean()), abs=0.1 * half)
    assert bootstrap_ci(values, 2000, level=0.5, seed=0)[1] - bootstrap_ci(values, 2000, level=0.5, seed=0)[0] < hi - lo
    # Symmetric order statistics: negating the values negates the interval exactly (a list or a tensor alike).
    assert bootstrap_ci((-values).tolist(), n_resamples=2000, seed=0) == (-hi, -lo)


def test_win_rate_tie_handling() -> None:
    assert outcome(2.0, 1.0, 0.0) == 1.0 and outcome(1.0, 2.0, 0.0) == 0.0 and outcome(1.0, 1.0, 0.0) == 0.5
    assert outcome(1.05, 1.0, 0.1) == 0.5  # within the tie margin
    summary = summarise_wins([1.0, 0.5, 0.5, 0.0], WinRateSettings(bootstrap=100))
    assert (summary["wins"], summary["ties"], summary["losses"]) == (1, 2, 1)
    assert summary["win_rate"] == 0.25 and summary["tie_rate"] == 0.5
    assert summary["win_rate_ties_half"]["mean"] == 0.5


def test_callable_judge_loader() -> None:
    judge = load_judge("tests.judge_fns:length")
    assert judge([("p", "abc"), ("p", "")]) == [3.0, 0.0]
    with pytest.raises(ConfigError, match="cannot import module"):
        load_judge("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="no callable 'nope'"):
        load_judge("tests.judge_fns:nope")


def test_reward_model_judge_loader(llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from rewardsft.reward import load_reward_model

    load_reward_model(llama_dir, torch.device("cpu")).save_pretrained(str(tmp_path / "rm"))
    AutoTokenizer.from_pretrained(str(llama_dir)).save_pretrained(str(tmp_path / "rm"))
    judge = load_judge(str(tmp_path / "rm"))
    pairs = [("What is the capital of Peru?", "Lima."), ([{"role": "user", "content": "Hi"}], "Hello.")]
    scores = judge(pairs)
    # The judge's score is HF's own sequence-classification forward on the rendered prompt + response.
    from transformers import AutoModelForSequenceClassification

    from rewardsft.data import Example, Renderer, tokenize_examples

    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "rm"))
    examples, _ = tokenize_examples([Example(p, r) for p, r in pairs], Renderer(tokenizer), 1024, 512)
    with torch.no_grad():
        expected = [hf(input_ids=torch.tensor([ex.input_ids])).logits.item() for ex in examples]
    assert scores == pytest.approx(expected, abs=1e-5)
