"""Win rate of a model against a baseline, judged by a reward model or a programmatic reward.

Both models answer every prompt with the same generation settings and seed; the judge scores both
answers; a prompt is a win, tie (|difference| <= ``tie_margin``) or loss. Every generation and score is saved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rewardsft.config import GenerationConfig
from rewardsft.data import load_rows
from rewardsft.data.formats import parse_prompts
from rewardsft.eval.judges import Judge, is_callable_spec, load_judge
from rewardsft.eval.stats import bootstrap_ci
from rewardsft.generation import sample_texts
from rewardsft.layout import GENERATIONS_FILE, SUMMARY_FILE, renderings_for


@dataclass
class WinRateSettings:
    n: int | None = None
    """Evaluate the first n prompts (all when None)."""
    split: str = "train"
    seed: int = 0
    tie_margin: float = 0.0
    bootstrap: int = 1000


def outcome(model_score: float, baseline_score: float, tie_margin: float) -> float:
    """1 win, 0.5 tie, 0 loss."""
    diff = model_score - baseline_score
    if abs(diff) <= tie_margin:
        return 0.5
    return 1.0 if diff > 0 else 0.0


def win_rate(
    model: str,
    baseline: str,
    prompts_path: str,
    judge: str | Judge,
    out: Path | None = None,
    generation: GenerationConfig | None = None,
    settings: WinRateSettings | None = None,
    render: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample both models on every prompt, judge both answers, count wins, ties and losses.

    A run renders prompts as it trained; a model that is not a run takes the ``render`` flags or, without them,
    the settings of the run it is compared with (:func:`rewardsft.layout.renderings_for`).
    """
    settings = settings or WinRateSettings()
    generation = generation or GenerationConfig(max_new_tokens=128)
    rows, source = load_rows(prompts_path, settings.split, settings.n)
    prompts = parse_prompts(rows, source)
    judged = isinstance(judge, str) and not is_callable_spec(judge)
    paths = [model, baseline, *([judge] if judged else [])]
    renderings = renderings_for(paths, **(render or {}))  # type: ignore[arg-type]
    model_answers = sample_texts(renderings[0], prompts, generation, settings.seed)
    baseline_answers = sample_texts(renderings[1], prompts, generation, settings.seed)
    scorer = load_judge(judge, renderings[2] if judged else None) if isinstance(judge, str) else judge
    model_scores = scorer(list(zip(prompts, model_answers, strict=True)))
    baseline_scores = scorer(list(zip(prompts, baseline_answers, strict=True)))
    outcomes = [outcome(m, b, settings.tie_margin) for m, b in zip(model_scores, baseline_scores, strict=True)]
    summary = summarise(outcomes, settings)
    summary.update(
        {
            "kind": "win_rate",
            "model": model,
            "baseline": baseline,
            "prompts": source,
            "judge": judge if isinstance(judge, str) else getattr(judge, "__name__", "callable"),
            "generation": asdict(generation),
            "settings": asdict(settings),
        }
    )
    records = [
        {
            "prompt": p,
            "model_response": ma,
            "baseline_response": ba,
            "model_score": ms,
            "baseline_score": bs,
            "outcome": o,
        }
        for p, ma, ba, ms, bs, o in zip(
            prompts, model_answers, baseline_answers, model_scores, baseline_scores, outcomes, strict=True
        )
    ]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / GENERATIONS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))  # last: the evaluation is complete
    return summary


def summarise(outcomes: list[float], settings: WinRateSettings) -> dict[str, Any]:
    n = max(len(outcomes), 1)
    wins = sum(o == 1.0 for o in outcomes)
    ties = sum(o == 0.5 for o in outcomes)
    losses = sum(o == 0.0 for o in outcomes)
    lo, hi = bootstrap_ci(outcomes, settings.bootstrap, seed=settings.seed)
    return {
        "n": len(outcomes),
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": wins / n,
        "tie_rate": ties / n,
        "loss_rate": losses / n,
        "win_rate_ties_half": {"mean": sum(outcomes) / n, "ci95": [lo, hi]},
    }
