"""Real-data study (issue 10), stage 1: the data, prepared from the installed-package sources only.

    python benchmarks/real_study.py prepare --out runs/study/data          # downloads the vaderSentiment sdist
    python benchmarks/real_study.py prepare --out DIR --source SDIST.tar.gz

Source: the human-rated snippets in the ``vaderSentiment==3.3.2`` sdist (``additional_resources/
hutto_ICWSM_2014.tar.gz``; each snippet carries the mean of about 20 human ratings, −4..+4). Only the **tweets** and
**Amazon product-review** subsets are read; the movie-review and NYT editorial subsets are reserved as a held-out
check and are never opened here. Per domain, after a seeded shuffle:

- ``demonstrations.jsonl``: prompt/completion rows, human snippets rated ≥ 2 (the training split);
- ``pairs.jsonl``: held-out preference pairs, a snippet rated ≥ 2 (never a demonstration) against one rated ≤ −2;
- ``judge.jsonl``: snippets with their mean rating that no run sees, to train and check a judge reward model.

The later stages (the grid of runs through the public CLI, evaluation, report) are not built yet.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

INNER = "additional_resources/hutto_ICWSM_2014.tar.gz"
DOMAINS = {
    "tweets": ("tweets_GroundTruth.txt", "Write a short positive tweet about your day."),
    "amazon": ("amazonReviewSnippets_GroundTruth.txt", "Write one sentence of a positive product review."),
}
RESERVED = ("movieReviewSnippets", "nytEditorialSnippets")
POSITIVE, NEGATIVE = 2.0, -2.0


@dataclass(frozen=True)
class Snippet:
    key: str
    rating: float
    text: str


@dataclass(frozen=True)
class Sizes:
    demonstrations: int = 300
    pairs: int = 150


def parse_ground_truth(text: str, name: str) -> list[Snippet]:
    """``id<TAB>mean rating<TAB>text`` lines; a malformed line is an error naming the file and line."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise ValueError(f"{name}: line {number}: expected id, rating and text separated by tabs")
        try:
            rating = float(parts[1])
        except ValueError:
            raise ValueError(f"{name}: line {number}: rating {parts[1]!r} is not a number") from None
        out.append(Snippet(parts[0], rating, "\t".join(parts[2:]).strip()))
    return out


def read_domains(sdist: Path) -> dict[str, list[Snippet]]:
    """The two allowed subsets from the sdist; the reserved ones are never extracted or read."""
    with tarfile.open(sdist) as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith(INNER)), None)
        if member is None:
            raise ValueError(f"{sdist}: no {INNER} inside (is it the vaderSentiment 3.3.2 sdist?)")
        handle = outer.extractfile(member)
        assert handle is not None
        inner_bytes = handle.read()
    domains = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for domain, (file_name, _) in DOMAINS.items():
            member = next((m for m in inner.getmembers() if m.name.endswith("/" + file_name)), None)
            if member is None:
                raise ValueError(f"{sdist}: {file_name} is missing from {INNER}")
            raw = inner.extractfile(member)
            assert raw is not None
            domains[domain] = parse_ground_truth(raw.read().decode("latin-1"), file_name)
    return domains


def split_domain(snippets: list[Snippet], sizes: Sizes, seed: int) -> dict[str, list[Snippet]]:
    """Disjoint demonstrations (≥ 2), held-out positives and negatives (≤ −2) for pairs, and the judge's rest."""
    rng = random.Random(seed)
    positives = [s for s in snippets if s.rating >= POSITIVE]
    negatives = [s for s in snippets if s.rating <= NEGATIVE]
    rng.shuffle(positives)
    rng.shuffle(negatives)
    need = sizes.demonstrations + sizes.pairs
    if len(positives) < need or len(negatives) < sizes.pairs:
        raise ValueError(
            f"{len(positives)} positive and {len(negatives)} negative snippets; need {need} and {sizes.pairs}"
        )
    demos = positives[: sizes.demonstrations]
    pair_pos = positives[sizes.demonstrations : need]
    pair_neg = negatives[: sizes.pairs]
    used = {s.key for s in [*demos, *pair_pos, *pair_neg]}
    judge = [s for s in snippets if s.key not in used]
    return {"demonstrations": demos, "pair_positive": pair_pos, "pair_negative": pair_neg, "judge": judge}


def write_domain(folder: Path, domain: str, parts: dict[str, list[Snippet]]) -> dict[str, int]:
    prompt = DOMAINS[domain][1]
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "demonstrations.jsonl": [{"prompt": prompt, "completion": s.text} for s in parts["demonstrations"]],
        "pairs.jsonl": [
            {"prompt": prompt, "chosen": p.text, "rejected": n.text}
            for p, n in zip(parts["pair_positive"], parts["pair_negative"], strict=True)
        ],
        "judge.jsonl": [{"prompt": prompt, "response": s.text, "rating": s.rating} for s in parts["judge"]],
    }
    for name, rows in files.items():
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {name: len(rows) for name, rows in files.items()}


def download_sdist(folder: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            str(folder),
            "vaderSentiment==3.3.2",
        ],
        check=True,
    )
    return next(folder.glob("vaderSentiment-3.3.2.tar.gz"))


def prepare(out: Path, source: Path | None, sizes: Sizes, seed: int) -> dict[str, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        sdist = source or download_sdist(Path(tmp))
        domains = read_domains(sdist)
    counts = {d: write_domain(out / d, d, split_domain(snippets, sizes, seed)) for d, snippets in domains.items()}
    (out / "prepare.json").write_text(json.dumps({"seed": seed, "sizes": vars(sizes), "counts": counts}, indent=2))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write demonstrations, held-out pairs and the judge split per domain")
    prep.add_argument("--out", default="runs/study/data")
    prep.add_argument("--source", help="the vaderSentiment-3.3.2 sdist (default: pip download it)")
    prep.add_argument("--demonstrations", type=int, default=Sizes.demonstrations)
    prep.add_argument("--pairs", type=int, default=Sizes.pairs)
    prep.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = Path(args.source) if args.source else None
    counts = prepare(Path(args.out), source, Sizes(args.demonstrations, args.pairs), args.seed)
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
