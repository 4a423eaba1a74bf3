"""A thin adapter to lm-evaluation-harness (optional extra ``[eval]``, imported only when used).

``open_llm_v1`` runs the Open LLM Leaderboard v1 suite with its few-shot settings and metrics and reports
their average, as the paper does. Scores depend on the harness version (recorded in the output) and the
model revision: compare only runs made with the same harness.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardsft.errors import ConfigError
from rewardsft.layout import SUMMARY_FILE


@dataclass(frozen=True)
class HarnessTask:
    name: str
    num_fewshot: int | None = None
    metric: str | None = None
    """``metric,filter`` key in lm-eval's results; None picks acc_norm, acc, then exact_match."""


OPEN_LLM_V1 = (
    HarnessTask("arc_challenge", 25, "acc_norm,none"),
    HarnessTask("hellaswag", 10, "acc_norm,none"),
    HarnessTask("mmlu", 5, "acc,none"),  # the official code ran MMLU 1-shot; the leaderboard uses 5
    HarnessTask("truthfulqa_mc2", 0, "acc,none"),
    HarnessTask("winogrande", 5, "acc,none"),
    HarnessTask("gsm8k", 5, "exact_match,strict-match"),
)
PREFERRED_METRICS = ("acc_norm,none", "acc,none", "exact_match,strict-match", "exact_match,none")


def parse_tasks(tasks: str) -> list[HarnessTask]:
    if tasks == "open_llm_v1":
        return list(OPEN_LLM_V1)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise ConfigError("--tasks is empty")
    return [HarnessTask(name) for name in names]


def pick_metric(task: HarnessTask, results: dict[str, Any]) -> tuple[str, float]:
    if task.metric is not None:
        if task.metric not in results:
            raise ConfigError(f"lm-eval gave no {task.metric!r} for {task.name} (has {sorted(results)})")
        return task.metric, float(results[task.metric])
    for key in PREFERRED_METRICS:
        if key in results:
            return key, float(results[key])
    numeric = [k for k, v in results.items() if isinstance(v, int | float) and "stderr" not in k and k != "alias"]
    if not numeric:
        raise ConfigError(f"lm-eval gave no numeric metric for {task.name}")
    return numeric[0], float(results[numeric[0]])


def run_harness(
    model: str,
    tasks: str,
    out: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    include_path: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
) -> dict[str, Any]:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("lm-evaluation-harness is not installed: pip install 'rewardsft[eval]'") from None
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    scores: dict[str, Any] = {}
    for task in parse_tasks(tasks):
        result = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={model},dtype={dtype}",
            tasks=[task.name],
            num_fewshot=task.num_fewshot,
            limit=limit,
            batch_size=batch_size,
            device=device,
            task_manager=manager,
        )
        metric, value = pick_metric(task, result["results"][task.name])
        scores[task.name] = {"metric": metric, "value": value, "num_fewshot": task.num_fewshot}
    summary = {
        "kind": "harness",
        "model": model,
        "tasks": scores,
        "limit": limit,
        "average": sum(s["value"] for s in scores.values()) / len(scores),
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary
