"""Programmatic judges used by the win-rate tests (imported as ``tests.judge_fns:NAME``)."""

from __future__ import annotations

from typing import Any


def length(prompt: Any, response: str) -> float:
    return float(len(response))


def constant(prompt: Any, response: str) -> float:
    return 1.0
