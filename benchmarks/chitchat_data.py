"""A third domain for the real-data study: human chit-chat from ``chitchat-dataset==0.9.0`` (MIT; PyPI, offline).

Each of its 7,168 conversations between two people was started from one of about 30 conversation prompts ("What
superpower do you wish you had, and why?") and rated by its participants for wit, upbeatness and interest (1-10).
A row here is the prompt and the conversation's **first turn** (the first speaker's opening messages joined), with
the conversation's mean rating as its judgement. Caveat: the rating is of the whole conversation, not of that
turn; it is a weak, noisy judgement of the turn, weaker than the vader snippets' per-snippet ratings.

- ``demonstrations.jsonl``: first turns of conversations rated ≥ 8 (the training split);
- ``pairs.jsonl``: held-out pairs of the same prompt, a turn rated ≥ 8 (never a demonstration) against one ≤ 4;
- ``judge.jsonl``: every other usable turn with its rating, for the judge no run trains on.

Unlike the vader domains the prompts differ, so the study's dev and test parts are split by whole prompts.
"""

from __future__ import annotations

import importlib.util
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POSITIVE, NEGATIVE = 8.0, 4.0
MIN_WORDS, MAX_WORDS = 4, 60


@dataclass(frozen=True)
class Turn:
    key: str
    prompt: str
    text: str
    rating: float


def dataset_file() -> Path:
    """``dataset.json`` inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the chitchat domain needs `pip install --no-deps chitchat-dataset==0.9.0`")
    return Path(next(iter(spec.submodule_search_locations))) / "dataset.json"


def first_turns(conversations: dict[str, Any]) -> list[Turn]:
    """One row per rated, prompted conversation whose first turn has 4-60 words."""
    out = []
    for key, conv in conversations.items():
        ratings, prompt, messages = conv.get("ratings"), conv.get("prompt"), conv.get("messages") or []
        if not ratings or not prompt or not messages:
            continue
        text = " ".join(u["text"].strip() for u in messages[0] if u.get("text", "").strip())
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            out.append(Turn(key, prompt.strip(), text, statistics.fmean(float(r) for r in ratings.values())))
    return out


def split_turns(turns: list[Turn], demonstrations: int, pairs: int, seed: int) -> dict[str, list[Any]]:
    """Disjoint demonstrations, same-prompt held-out pairs (≥ 8 vs ≤ 4) and the judge's rest."""
    rng = random.Random(seed)
    shuffled = sorted(turns, key=lambda t: t.key)
    rng.shuffle(shuffled)
    positives = [t for t in shuffled if t.rating >= POSITIVE]
    demos = positives[:demonstrations]
    held = positives[demonstrations:]
    negatives = [t for t in shuffled if t.rating <= NEGATIVE]
    by_prompt: dict[str, list[Turn]] = {}
    for t in negatives:
        by_prompt.setdefault(t.prompt, []).append(t)
    made: list[tuple[Turn, Turn]] = []
    for chosen in held:
        if len(made) == pairs:
            break
        if by_prompt.get(chosen.prompt):
            made.append((chosen, by_prompt[chosen.prompt].pop()))
    if len(demos) < demonstrations or len(made) < pairs:
        raise ValueError(f"{len(demos)} demonstrations and {len(made)} pairs; asked {demonstrations} and {pairs}")
    used = {t.key for t in demos} | {t.key for pair in made for t in pair}
    return {"demonstrations": demos, "pairs": made, "judge": [t for t in shuffled if t.key not in used]}


def prepare_chitchat(
    out: Path, demonstrations: int, pairs: int, seed: int, source: Path | None = None
) -> dict[str, int]:
    conversations = json.loads((source or dataset_file()).read_text())
    parts = split_turns(first_turns(conversations), demonstrations, pairs, seed)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict[str, Any]]] = {
        "demonstrations.jsonl": [{"prompt": t.prompt, "completion": t.text} for t in parts["demonstrations"]],
        "pairs.jsonl": [{"prompt": c.prompt, "chosen": c.text, "rejected": r.text} for c, r in parts["pairs"]],
        "judge.jsonl": [{"prompt": t.prompt, "response": t.text, "rating": t.rating} for t in parts["judge"]],
    }
    for name, rows in files.items():
        (out / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {name: len(rows) for name, rows in files.items()}
