"""Use a learned reward model after training: score (prompt, response) rows, and best-of-n sampling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import GenerationConfig, ModelConfig
from rewardsft.data import DataError, Example, Renderer, load_rows, parse_rows
from rewardsft.data.formats import Prompt, parse_prompts
from rewardsft.data.tokenize import TokenizedExample, render_prompt_ids, tokenize_example
from rewardsft.generation import sample_texts
from rewardsft.layout import Rendering, rendering_for, renderings_for
from rewardsft.models import load_tokenizer
from rewardsft.reward import load_reward_model, score_examples


class RewardScorer:
    """A reward model with its own tokenizer and prompt rendering (the one read-out of ``reward.rm_scores``).

    ``model`` is a path (a run's ``reward_model/`` renders as the run trained, anything else with the defaults)
    or a :class:`~rewardsft.layout.Rendering` resolved with the other models of an evaluation.
    """

    def __init__(self, model: str | Path | Rendering, device: torch.device | None = None, batch_size: int = 16):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        rendering = model if isinstance(model, Rendering) else rendering_for(model)
        model_path, settings = rendering.path, rendering.settings
        self.tokenizer = load_tokenizer(ModelConfig(name_or_path=model_path))
        self.renderer = Renderer.from_settings(self.tokenizer, settings)
        self.model = load_reward_model(model_path, self.device, pad_token_id=self.tokenizer.pad_token_id).eval()
        self.max_length, self.max_prompt_length = settings.max_length, settings.max_prompt_length
        self.batch_size = batch_size

    def score(self, pairs: list[tuple[Prompt, str]]) -> list[float]:
        """Rewards of (prompt, response) pairs; an empty response scores the prompt's end alone."""
        tokenized = []
        for prompt, response in pairs:
            ex, _, _ = tokenize_example(
                Example(prompt, response or " "), self.renderer, self.max_length, self.max_prompt_length
            )
            tokenized.append(ex or TokenizedExample(render_prompt_ids(prompt, self.renderer), []))
        return score_examples(self.model, tokenized, self.batch_size, self.tokenizer.pad_token_id)


def score_file(
    reward_model: str,
    data: str,
    out: Path | None,
    fmt: str = "auto",
    split: str = "train",
    batch_size: int = 16,
    render: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Score every row's (prompt, response) — and its rejected side when it has one — and write JSONL."""
    rows, source = load_rows(data, split)
    examples = parse_rows(rows, source, fmt)
    scorer = RewardScorer(rendering_for(reward_model, **(render or {})), batch_size=batch_size)
    scores = scorer.score([(ex.prompt, ex.response) for ex in examples])
    with_rejected = [i for i, ex in enumerate(examples) if ex.rejected is not None]
    rejected_scores = dict(
        zip(
            with_rejected,
            scorer.score([(examples[i].prompt, examples[i].rejected or "") for i in with_rejected]),
            strict=True,
        )
    )
    records = []
    for i, (ex, score) in enumerate(zip(examples, scores, strict=True)):
        record: dict[str, Any] = {"row": i + 1, "prompt": ex.prompt, "response": ex.response, "score": score}
        if i in rejected_scores:
            record |= {"rejected": ex.rejected, "rejected_score": rejected_scores[i]}
        records.append(record)
    write_jsonl(records, out)
    return records


def best_of_n(
    model: str,
    reward_model: str,
    prompts_path: str,
    n: int,
    out: Path | None,
    generation: GenerationConfig,
    seed: int = 0,
    render: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Sample ``n`` responses per prompt with ``model`` and keep the one ``reward_model`` scores highest.

    Each model renders prompts as its run trained; ``render`` flags (or else a run's settings) apply to a model
    that is not a run (:func:`rewardsft.layout.renderings_for`).
    """
    if n < 1:
        raise DataError("--n must be at least 1")
    rows, source = load_rows(prompts_path)
    prompts = parse_prompts(rows, source)
    policy, judge = renderings_for([model, reward_model], **(render or {}))
    texts = sample_texts(policy, prompts, generation, seed, n)
    scorer = RewardScorer(judge)
    scores = scorer.score([(prompts[i // n], text) for i, text in enumerate(texts)])
    records = []
    for p, prompt in enumerate(prompts):
        best = max(range(p * n, (p + 1) * n), key=lambda i: scores[i])
        candidates = [{"response": texts[i], "score": scores[i]} for i in range(p * n, (p + 1) * n)]
        records.append({"prompt": prompt, "best": texts[best], "best_score": scores[best], "candidates": candidates})
    write_jsonl(records, out)
    return records


def write_jsonl(records: list[dict[str, Any]], out: Path | None) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if out is None:
        print(lines, end="")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(lines)
    tmp.replace(out)
