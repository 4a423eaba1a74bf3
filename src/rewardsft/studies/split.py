"""The study's data: demonstrations to train on, and a dev and a test part that never share a pair or a prompt.

With held-out preference pairs (``--pairs``) the pairs are split into dev (tuning) and test (the verdict), whole
prompts to one side. Without them, a share of the demonstrations is held out (whole prompts again) and split the
same way; those held-out demonstrations are later paired with the base model's own sample for their prompt
(:func:`pairs_against_base`), which allows two measures: the held-out demonstrations' log-likelihood and the gap
between them and what the base model would have said.

When every row has the same prompt (single-instruction data), no split by prompt exists: the rows are split one
by one (identical rows kept together) and the split says so. Files are written in one canonical format that
parses back to the very same examples, so each run renders them exactly as it would render the user's file.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from rewardsft.data import Example, load_examples
from rewardsft.data.formats import Prompt
from rewardsft.errors import ConfigError

SPLIT_FILE = "split.json"
MIN_PART = 4
"""Fewest pairs (or held-out demonstrations) a dev or a test part may hold: below it a bootstrap interval over
the pairs is all but meaningless (one pair gives a zero-width interval and a confident verdict)."""


@dataclass(frozen=True)
class Split:
    """Where the study's data lives (all under ``DIR/split/``) and how it was cut."""

    kind: Literal["pairs", "demonstrations"]
    """``pairs``: dev/test are the user's preference pairs; ``demonstrations``: held-out demonstrations (their
    rejected side is the base model's sample, written by :func:`pairs_against_base`)."""
    train: str
    dev: str
    test: str
    """File names of the three parts, in the split folder (:meth:`file` gives their paths)."""
    unit: Literal["prompt", "row"]
    """``prompt``: no prompt is on two sides; ``row``: every row shares one prompt, so rows were split."""
    counts: dict[str, int]
    fingerprint: str
    """Of the inputs (parsed rows and split settings): a rerun on other data is refused, not silently mixed."""
    notes: list[str] = field(default_factory=list)
    folder: str = field(default="", compare=False)
    """Where the split folder is now (not written: a study folder may move)."""

    def file(self, part: str) -> str:
        """The path of the ``train``, ``dev`` or ``test`` part."""
        return str(Path(self.folder) / getattr(self, part))

    def write(self, folder: Path) -> None:
        record = {k: v for k, v in asdict(self).items() if k != "folder"}
        (folder / SPLIT_FILE).write_text(json.dumps(record, indent=2))

    @classmethod
    def read(cls, folder: Path) -> Split:
        return cls(**json.loads((folder / SPLIT_FILE).read_text()), folder=str(folder))


def prompt_key(prompt: Prompt) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def example_key(ex: Example) -> str:
    return json.dumps([ex.prompt, ex.response, ex.rejected], sort_keys=True, ensure_ascii=False)


def assign(keys: Sequence[str], share: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices of two parts, every key wholly on one side: a seeded shuffle of the distinct keys, the first
    part filled to ``share`` of the rows (at least one row), the rest second. Needs two distinct keys."""
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    order = list(groups)
    if len(order) < 2:
        raise ValueError("assign needs at least two distinct keys")
    random.Random(seed).shuffle(order)
    target = max(1, round(share * len(keys)))
    first: list[int] = []
    taken = 0
    while taken < len(order) - 1 and len(first) < target:
        first += groups[order[taken]]
        taken += 1
    second = [i for key in order[taken:] for i in groups[key]]
    return sorted(first), sorted(second)


def split_by_prompt(
    examples: Sequence[Example], share: float, seed: int
) -> tuple[list[int], list[int], Literal["prompt", "row"]]:
    """Two parts with no prompt in both; when all rows share one prompt, by row (identical rows together)."""
    keys = [prompt_key(ex.prompt) for ex in examples]
    if len(set(keys)) >= 2:
        first, second = assign(keys, share, seed)
        return first, second, "prompt"
    rows = [example_key(ex) for ex in examples]
    if len(set(rows)) < 2:
        raise ConfigError("every held-out row is the same: nothing to split into dev and test")
    first, second = assign(rows, share, seed)
    return first, second, "row"


def write_rows(path: Path, examples: Sequence[Example]) -> str:
    """JSONL in the canonical format: prompt/completion rows, or chosen/rejected rows when they have a rejected
    side (message prompts keep their responses as assistant turns, which is how they parse back)."""
    path.write_text("".join(json.dumps(canonical_row(ex), ensure_ascii=False) + "\n" for ex in examples))
    return str(path)


def canonical_row(ex: Example) -> dict[str, Any]:
    if ex.rejected is None:
        return {"prompt": ex.prompt, "completion": ex.response}
    if isinstance(ex.prompt, str):
        return {"prompt": ex.prompt, "chosen": ex.response, "rejected": ex.rejected}
    turn = [{"role": "assistant", "content": ex.response}]
    return {"prompt": ex.prompt, "chosen": turn, "rejected": [{"role": "assistant", "content": ex.rejected}]}


def fingerprint(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DataSpec:
    """The study's inputs, as the user named them."""

    data: str
    pairs: str | None = None
    split: str = "train"
    format: str = "auto"
    dev_share: float = 0.5
    """Share of the held-out pairs (or held-out demonstrations) used for tuning; the rest is the test part."""
    holdout: float = 0.2
    """Without pairs: share of the demonstrations held out (half dev, half test by default)."""
    seed: int = 0


def make_split(spec: DataSpec, folder: Path) -> Split:
    """Write (once) the train, dev and test files under ``folder``; a rerun on the same inputs reads them back,
    a rerun on other inputs is refused."""
    for name, share in (("dev_share", spec.dev_share), ("holdout", spec.holdout)):
        if not 0 < share < 1:
            raise ConfigError(f"{name} must be between 0 and 1, got {share}")
    demos, source = load_examples(spec.data, spec.split, spec.format)
    pairs = load_examples(spec.pairs, spec.split, "chosen_rejected") if spec.pairs else None
    # The rows and the split settings, not the file names: the same data at another path is the same study.
    settings = {k: v for k, v in asdict(spec).items() if k not in ("data", "pairs")}
    stamp = fingerprint(
        settings, [example_key(e) for e in demos], [example_key(e) for e in pairs[0]] if pairs else None
    )
    if (folder / SPLIT_FILE).is_file():
        done = Split.read(folder)
        if done.fingerprint != stamp:
            raise ConfigError(
                f"{folder.parent} holds a study of other data or split settings ({folder / SPLIT_FILE}); "
                "use another --out, or --overwrite to start it again"
            )
        return done
    folder.mkdir(parents=True, exist_ok=True)
    if pairs is not None:
        split = split_pairs(demos, pairs[0], pairs[1], spec, folder, stamp)
    else:
        split = hold_out(demos, source, spec, folder, stamp)
    split.write(folder)
    return replace(split, folder=str(folder))


def split_pairs(
    demos: list[Example], pairs: list[Example], source: str, spec: DataSpec, folder: Path, stamp: str
) -> Split:
    if len(pairs) < 2 * MIN_PART:
        raise ConfigError(f"{source}: {len(pairs)} pairs; a dev and a test part need at least {2 * MIN_PART}")
    dev, test, unit = split_by_prompt(pairs, spec.dev_share, spec.seed)
    check_parts(source, "pairs", dev, test)
    notes = leakage_notes(demos, [pairs[i] for i in test])
    if unit == "row":
        notes.append("every pair has the same prompt, so dev and test are split pair by pair (they share it)")
    parts = {"train": demos, "dev": [pairs[i] for i in dev], "test": [pairs[i] for i in test]}
    return written("pairs", folder, parts, unit, stamp, notes)


def hold_out(demos: list[Example], source: str, spec: DataSpec, folder: Path, stamp: str) -> Split:
    """Without pairs: a share of the demonstrations held out, then cut into dev and test."""
    if len(demos) * spec.holdout < 2 * MIN_PART:
        raise ConfigError(
            f"{source}: {len(demos)} demonstrations; holding out {spec.holdout:.0%} leaves fewer than "
            f"{2 * MIN_PART} for dev and test (give held-out pairs with --pairs, or more demonstrations)"
        )
    held, train, unit = split_by_prompt(demos, spec.holdout, spec.seed)
    held_rows = [demos[i] for i in held]
    dev, test, inner = split_by_prompt(held_rows, spec.dev_share, spec.seed + 1)
    check_parts(source, "held-out demonstrations", dev, test)
    notes = [
        "no held-out pairs were given: dev and test hold out demonstrations, paired with the base model's own "
        "sample for their prompt; the measures are their log-likelihood and their gap over that sample"
    ]
    if unit == "row":
        notes.append("every demonstration has the same prompt, so rows were held out one by one")
    elif inner == "row":
        unit = "row"
        notes.append("the held-out demonstrations share one prompt, so dev and test were split row by row")
    if len(held) > 1.5 * spec.holdout * len(demos):
        notes.append(
            f"{len(held)} of {len(demos)} demonstrations were held out ({len(held) / len(demos):.0%}, asked "
            f"{spec.holdout:.0%}): prompts are held out whole, and their groups are large"
        )
    parts = {
        "train": [demos[i] for i in train],
        "dev": [held_rows[i] for i in dev],
        "test": [held_rows[i] for i in test],
    }
    return written("demonstrations", folder, parts, unit, stamp, notes)


def check_parts(source: str, what: str, dev: Sequence[int], test: Sequence[int]) -> None:
    """Refuse a dev or test part below :data:`MIN_PART` rows (whole prompts can make the parts uneven)."""
    small = min(len(dev), len(test))
    if small < MIN_PART:
        raise ConfigError(
            f"{source}: splitting by whole prompts left {len(dev)} {what} for dev and {len(test)} for test; each "
            f"needs at least {MIN_PART} (give more held-out rows, more distinct prompts, or change --dev-share)"
        )


def written(
    kind: Literal["pairs", "demonstrations"],
    folder: Path,
    parts: dict[str, list[Example]],
    unit: Literal["prompt", "row"],
    stamp: str,
    notes: list[str],
) -> Split:
    """Write the train, dev and test parts (held-out demonstrations as ``dev-demonstrations.jsonl``, ...)."""
    suffix = "" if kind == "pairs" else "-demonstrations"
    names = {name: f"{name}{'' if name == 'train' else suffix}.jsonl" for name in parts}
    for name, rows in parts.items():
        write_rows(folder / names[name], rows)
    counts = {name: len(rows) for name, rows in parts.items()}
    return Split(kind, names["train"], names["dev"], names["test"], unit, counts, stamp, notes, str(folder))


def leakage_notes(demos: Sequence[Example], test: Sequence[Example]) -> list[str]:
    """Test pairs whose preferred side is a training demonstration word for word (their gap is flattered)."""
    seen = {(prompt_key(d.prompt), d.response.strip()) for d in demos}
    leaked = sum((prompt_key(p.prompt), p.response.strip()) in seen for p in test)
    if not leaked:
        return []
    return [f"{leaked} of the {len(test)} test pairs prefer a response that is also a training demonstration"]
