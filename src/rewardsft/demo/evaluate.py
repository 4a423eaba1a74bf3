"""The demo's held-out evaluation under the true reward: greedy and sampled accuracy and the habit's share.

Writes ``RUN/eval/accuracy/summary.json`` and ``per_example.csv`` (one row per held-out prompt, keyed by a hash
of the prompt) so ``eval/paired.py`` compares methods prompt by prompt, like the gap and the win rate.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from rewardsft.config import GenerationConfig
from rewardsft.data import load_rows
from rewardsft.data.formats import parse_prompts
from rewardsft.demo.task import is_habit, true_reward
from rewardsft.generation import sample_texts
from rewardsft.layout import SUMMARY_FILE, rendering_for

ACCURACY_METRICS = ["greedy_correct", "sample_correct", "sample_habit"]


def task_accuracy(
    model: str,
    prompts_path: Path,
    out: Path | None,
    seed: int,
    max_new_tokens: int = 16,
    render: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Greedy and sampled (temperature 1) answers to every prompt, scored by the true reward.

    ``render``: rendering flags for a model that is not a run (the base), so it sees the runs' prompts.
    """
    rows, source = load_rows(str(prompts_path))
    prompts = parse_prompts(rows, source)
    rendering = rendering_for(model, **(render or {}))
    greedy = sample_texts(rendering, prompts, GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False), seed)
    sampled = sample_texts(rendering, prompts, GenerationConfig(max_new_tokens=max_new_tokens), seed)
    per_example: list[dict[str, Any]] = []
    for i, (p, g, s) in enumerate(zip(prompts, greedy, sampled, strict=True)):
        key = hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]
        scores = {"greedy_correct": true_reward(p, g), "sample_correct": true_reward(p, s)}
        per_example.append({"row": i + 1, "pair_id": key, **scores, "sample_habit": float(is_habit(p, s))})
    n = max(len(per_example), 1)
    examples = [
        {"prompt": p, "greedy": g, "sample": s} for p, g, s in zip(prompts[:5], greedy[:5], sampled[:5], strict=True)
    ]
    summary: dict[str, Any] = {
        "kind": "task_accuracy",
        "model": model,
        "prompts": source,
        "paired_metrics": ACCURACY_METRICS,
        "lower_is_better": ["sample_habit"],  # the habitual answer is the mistake: eval compare reads this
        **{m: sum(float(r[m]) for r in per_example) / n for m in ACCURACY_METRICS},
        "examples": examples,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        with (out / "per_example.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(per_example[0]))
            writer.writeheader()
            writer.writerows(per_example)
    return summary
