"""The demo's built-in task: reverse a short letter sequence, with a true reward a program computes.

Why this task: a tiny model learns it in seconds on a CPU, every answer is checkable exactly, and it has a natural
*habitual mistake*, copying the sequence instead of reversing it, that the base model is taught on purpose (its
pre-training mixes correct reversals with copies). A demonstration only ever shows the correct reversal; the
paper's mechanism, pushing down what the model itself generates relative to the demonstrations, has the copies to
push down. Prompts are plain text (``reverse a b c =``) and the tiny model has no chat template.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LETTERS = "abcdefgh"
PREFIX = "reverse "
SUFFIX = " ="


def prompt_text(word: str) -> str:
    return PREFIX + " ".join(word) + SUFFIX


def correct_answer(word: str) -> str:
    return " " + " ".join(reversed(word))


def habitual_answer(word: str) -> str:
    """The base model's systematic mistake: the sequence copied, not reversed."""
    return " " + " ".join(word)


def word_of(prompt: Any) -> str | None:
    """The letter sequence a prompt asks about (None for anything else)."""
    text = prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
    text = text.strip()
    if not (text.startswith(PREFIX.strip()) and text.endswith(SUFFIX.strip())):
        return None
    return "".join(text[len(PREFIX.strip()) : -len(SUFFIX.strip())].split())


def true_reward(prompt: Any, response: str) -> float:
    """1 for the exact reversal, else 0 (the judge of the demo's win rate; no method ever trains against it)."""
    word = word_of(prompt)
    return float(word is not None and response.split() == list(reversed(word)))


def is_habit(prompt: Any, response: str) -> bool:
    word = word_of(prompt)
    return word is not None and response.split() == list(word)


@dataclass(frozen=True)
class TaskSizes:
    pretrain: int = 3000
    """Base model's pre-training prompts (a mixture of correct reversals and copies)."""
    habit_share: float = 0.4
    """Share of copies in the pre-training mixture: the strength of the habit."""
    demonstrations: int = 200
    """Training prompts with a correct demonstration (what SFT, IRFT and RFT all get)."""
    dev: int = 200
    """Prompts the demo's settings were chosen on (docs/LOG.md); never used for a reported figure."""
    test: int = 200
    """Held-out prompts every reported figure is computed on."""


def draw_words(rng: random.Random, n: int, exclude: set[str]) -> list[str]:
    """``n`` distinct non-palindromic words of 3-5 letters not in ``exclude`` (a palindrome's copy is correct)."""
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 5)))
        if word not in seen and word != word[::-1]:
            seen.add(word)
            out.append(word)
    return out


@dataclass
class TaskData:
    pretrain: Path
    demonstrations: Path
    dev: Path
    test: Path
    test_pairs: Path
    """Held-out (correct, habitual) answer pairs for the log-prob gap: no method ever sees a rejected answer."""
    tokenizer_corpus: list[str]


def write_task(folder: Path, sizes: TaskSizes, seed: int, noise: float = 0.0) -> TaskData:
    """Write every split as JSONL. ``noise``: that share of the demonstrations is replaced by the habitual
    (low-quality) answer, for the robustness sweep; the prompts and every other split stay the same."""
    rng = random.Random(seed)
    words = draw_words(rng, sizes.pretrain + sizes.demonstrations + sizes.dev + sizes.test, set())
    cut = [sizes.pretrain, sizes.demonstrations, sizes.dev, sizes.test]
    pre, demos, dev, test = (words[sum(cut[:i]) : sum(cut[: i + 1])] for i in range(4))
    mix = random.Random(seed + 1)
    noisy = set(random.Random(seed + 2).sample(range(len(demos)), round(noise * len(demos))))
    folder.mkdir(parents=True, exist_ok=True)

    def rows(items: list[str], answer: Any) -> list[dict[str, str]]:
        return [{"prompt": prompt_text(w), "completion": answer(i, w)} for i, w in enumerate(items)]

    pretrain_rows = rows(
        pre, lambda i, w: habitual_answer(w) if mix.random() < sizes.habit_share else correct_answer(w)
    )
    demo_rows = rows(demos, lambda i, w: habitual_answer(w) if i in noisy else correct_answer(w))
    pairs = [{"prompt": prompt_text(w), "chosen": correct_answer(w), "rejected": habitual_answer(w)} for w in test]
    paths = {}
    for name, data in (
        ("pretrain", pretrain_rows),
        ("demonstrations", demo_rows),
        ("dev", rows(dev, lambda i, w: correct_answer(w))),
        ("test", rows(test, lambda i, w: correct_answer(w))),
        ("test_pairs", pairs),
    ):
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in data))
    corpus = [prompt_text(w) + correct_answer(w) for w in pre[:500]]
    return TaskData(tokenizer_corpus=corpus, **paths)
