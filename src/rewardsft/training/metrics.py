"""Metrics: one JSON object per logged step in ``metrics.jsonl``, a line on stdout, optional trackers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rewardsft.layout import METRICS_FILE


class MetricsLogger:
    """Appends ``{"step": N, "<namespace>/<name>": value, ...}`` lines; keys are slash-namespaced."""

    def __init__(self, output_dir: Path, enabled: bool, tracker_log: Callable[[dict[str, float], int], None] | None):
        self.path = output_dir / METRICS_FILE
        self.enabled = enabled
        self.tracker_log = tracker_log

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file reads like one uninterrupted run."""
        if not self.enabled or not self.path.exists():
            return
        kept = [rec for rec in read_metrics(self.path) if rec.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(rec) + "\n" for rec in kept))
        tmp.replace(self.path)

    def log(self, step: int, values: dict[str, float], echo: Callable[[str], None] | None = None) -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tracker_log is not None:
            self.tracker_log(values, step)
        if echo is not None:
            echo(format_metrics(step, values))


def _plain(value: Any) -> Any:
    value = float(value) if hasattr(value, "__float__") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def format_metrics(step: int, values: dict[str, float]) -> str:
    parts = [f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in values.items()]
    return f"step {step}: " + " ".join(parts)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]
