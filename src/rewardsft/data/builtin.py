"""A small built-in demonstration set (short factual Q&A) for smoke runs and the tiny tokenizer's corpus."""

from __future__ import annotations

from typing import Any

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Chile": "Santiago",
    "Cuba": "Havana",
    "Ireland": "Dublin",
    "Poland": "Warsaw",
    "Portugal": "Lisbon",
}
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "early": "late",
    "open": "closed",
    "full": "empty",
    "young": "old",
    "strong": "weak",
    "high": "low",
    "wet": "dry",
}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def builtin_rows() -> list[dict[str, Any]]:
    """Chat-format rows: ``{"messages": [user, assistant]}``."""
    pairs = [
        (f"What is the capital of {country}?", f"The capital of {country} is {city}.")
        for country, city in CAPITALS.items()
    ]
    pairs += [
        (f"What is the opposite of {word}?", f"The opposite of {word} is {other}.") for word, other in OPPOSITES.items()
    ]
    pairs += [
        (
            f"What is {NUMBERS[a]} plus {NUMBERS[b]}?",
            f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} is {NUMBERS[a + b]}.",
        )
        for a in range(1, 5)
        for b in range(1, 6)
        if a + b <= 10
    ]
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def builtin_corpus() -> list[str]:
    lines = []
    for row in builtin_rows():
        for message in row["messages"]:  # type: ignore[attr-defined]
            lines.append(message["content"])
    lines += [
        "A demonstration shows the model what a good answer looks like.",
        "The reward is higher for the demonstration than for the model's own answer.",
        "Hello! How can I help you today? Thank you, that is very kind.",
        "I do not know the answer to that question, but I can try to help.",
    ]
    return lines
