"""Real-data study (issue 10), stage 1: the data, prepared from the installed-package sources only.

    python -m benchmarks.real_study prepare --out runs/study/data          # downloads the vaderSentiment sdist
    python -m benchmarks.real_study prepare --out DIR --source SDIST.tar.gz

Source: the human-rated snippets in the ``vaderSentiment==3.3.2`` sdist (``additional_resources/
hutto_ICWSM_2014.tar.gz``; each snippet carries the mean of about 20 human ratings, −4..+4). Only the **tweets** and
**Amazon product-review** subsets are read; the movie-review and NYT editorial subsets are reserved as a held-out
check and are never opened here. Per domain, after a seeded shuffle:

- ``demonstrations.jsonl``: prompt/completion rows, human snippets rated ≥ 2 (the training split);
- ``pairs.jsonl``: held-out preference pairs, a snippet rated ≥ 2 (never a demonstration) against one rated ≤ −2;
- ``judge.jsonl``: snippets with their mean rating that no run sees, to train and check a judge reward model.

Stage 2, ``run``: per domain, ``rewardsft study`` (:func:`rewardsft.study`) on the demonstrations and the held-out
pairs: every method's learning rate tuned on a dev half of the pairs with the same tries, SFT → SPIN/IRFT against
a budget-matched SFT control, the chosen settings over seeds, verdicts on the test half. This module adds only
what is specific to these domains: the samples of every chosen run judged by :mod:`benchmarks.study_judges`
(MiniLM head fitted to human ratings, VADER) with their health. Resumable, as the study is. Stage 3,
``summarize``: ``results.json``/``results.md`` with a pooled line across domains (:mod:`benchmarks.study_summary`).
``all`` does the three.

    make study          # installs the judges and SmolLM2, then: python -m benchmarks.real_study all
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    files: dict[str, list[dict[str, Any]]] = {
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


CHITCHAT = "chitchat"
"""The third domain (:mod:`benchmarks.chitchat_data`): conversation prompts and first turns, rated 1-10."""
THRESHOLDS = {"tweets": (POSITIVE, NEGATIVE), "amazon": (POSITIVE, NEGATIVE), CHITCHAT: (8.0, 4.0)}
"""Per domain, the ratings that make a text preferred (≥) and dispreferred (≤) in pairs and judge checks."""


def prepare(
    out: Path, source: Path | None, sizes: Sizes, seed: int, chitchat: Path | bool = False
) -> dict[str, dict[str, int]]:
    """Both vader domains, and chitchat when asked (``True``: the installed package's data; a path: that
    dataset.json)."""
    from benchmarks.chitchat_data import prepare_chitchat

    with tempfile.TemporaryDirectory() as tmp:
        sdist = source or download_sdist(Path(tmp))
        domains = read_domains(sdist)
    counts = {d: write_domain(out / d, d, split_domain(snippets, sizes, seed)) for d, snippets in domains.items()}
    if chitchat is not False:
        path = chitchat if isinstance(chitchat, Path) else None
        counts[CHITCHAT] = prepare_chitchat(out / CHITCHAT, sizes.demonstrations, sizes.pairs, seed, path)
    (out / "prepare.json").write_text(json.dumps({"seed": seed, "sizes": vars(sizes), "counts": counts}, indent=2))
    return counts


# ---------------------------------------------------------------- stage 2: the grid, through `rewardsft study`


@dataclass(frozen=True)
class Grid:
    """What the study runs per domain (docs/results.md, "Evidence")."""

    methods: tuple[str, ...] = ("spin", "irft-t4", "spin-from-sft", "irft-t2-from-sft", "irft-t4-from-sft")
    lrs: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)
    seeds: int = 3
    demonstrations: int = 128
    max_new_tokens: int = 48
    eval_samples: int = 64
    batch_size: int = 8
    domains: tuple[str, ...] = ("tweets", "amazon", CHITCHAT)


QUICK = Grid(
    methods=("spin", "spin-from-sft"),
    lrs=(1e-4, 1e-3),
    seeds=1,
    demonstrations=16,
    max_new_tokens=8,
    eval_samples=6,
    batch_size=4,
    domains=("tweets",),
)
EVAL_SEED = 1234
RENDER: dict[str, Any] = {"text_prompts": "user_turn", "max_length": 128, "max_prompt_length": 64}
"""How every run renders the snippets (and the base, which is not a run, is rendered the same way)."""


def overrides(grid: Grid) -> list[str]:
    """Every run's settings: the prompt as a user turn of SmolLM2's chat template, short snippets, and a constant
    learning rate after warm-up (a decaying one left the README's SFT barely moved from the base on new data)."""
    return [
        *(f"data.{key}={value}" for key, value in RENDER.items()),
        f"data.max_rows={grid.demonstrations}",
        f"train.batch_size={grid.batch_size}",
        f"generation.max_new_tokens={grid.max_new_tokens}",
        "generation.batch_size=64",
        "optim.schedule=constant",
    ]


def study_domain(out: Path, data: Path, model: Path, grid: Grid) -> dict[str, Any]:
    """``rewardsft study`` of one domain into ``out`` (resumable); returns its ``study.json``."""
    import rewardsft

    return rewardsft.study(
        model,
        data / "demonstrations.jsonl",
        out,
        pairs=data / "pairs.jsonl",
        methods=grid.methods,
        seeds=grid.seeds,
        lrs=grid.lrs,
        encoder="minilm",  # the human-likeness of every test run's samples (MAUVE, discriminator)
        overrides=overrides(grid),
    )


def judge_samples(out: Path, data: Path, model: Path, record: dict[str, Any], grid: Grid) -> None:
    """Judged samples (and their health) of the base and of every run the verdict rests on."""
    judges = domain_judges(out, data, grid)
    write_samples(model, out / "base" / "eval" / "samples", data, grid, judges, render=True)
    for runs in record["runs"].values():
        for run in runs:
            write_samples(Path(run), Path(run) / "eval" / "samples", data, grid, judges, render=False)


def write_samples(model: Path, folder: Path, data: Path, grid: Grid, judges: Any, render: bool) -> None:
    from benchmarks.study_judges import sample_health
    from rewardsft.config import GenerationConfig
    from rewardsft.generation import sample_responses
    from rewardsft.layout import rendering_for

    if (folder / "health.json").is_file():
        return
    flags = RENDER if render else {}
    prompts: list[Any] = domain_prompts(data, grid)
    gen = GenerationConfig(max_new_tokens=grid.max_new_tokens, batch_size=64)
    per_prompt = -(-grid.eval_samples // len(prompts))
    responses = sample_responses(rendering_for(model, **flags), prompts, gen, seed=EVAL_SEED, n=per_prompt)
    scores = judges.score([r.text for r in responses])
    rows = [{**vars(r), **{k: v[i] for k, v in scores.items()}} for i, r in enumerate(responses)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    demos = demonstration_texts(data, grid)
    health = sample_health(rows, demos, grid.max_new_tokens)
    (folder / "health.json").write_text(json.dumps(health, indent=2))  # last: the samples are complete


def domain_prompts(data: Path, grid: Grid) -> list[str]:
    """The distinct prompts of the demonstrations the runs train on (one for the vader domains, ~30 for chitchat)."""
    lines = (data / "demonstrations.jsonl").read_text().splitlines()[: grid.demonstrations]
    return list(dict.fromkeys(json.loads(line)["prompt"] for line in lines))


def demonstration_texts(data: Path, grid: Grid) -> set[str]:
    lines = (data / "demonstrations.jsonl").read_text().splitlines()[: grid.demonstrations]
    return {json.loads(line)["completion"].strip() for line in lines}


def domain_judges(out: Path, data: Path, grid: Grid) -> Any:
    """Fit (once) and load the domain's judges; their held-out agreement goes to ``judges.json``."""
    from benchmarks.study_judges import Judges, fit_judges

    judge_file = out / "judges.pt"
    if not judge_file.is_file():
        out.mkdir(parents=True, exist_ok=True)
        positive, negative = THRESHOLDS.get(data.name, (POSITIVE, NEGATIVE))
        quality = fit_judges(data / "judge.jsonl", judge_file, 200 if grid is QUICK else None, positive, negative)
        (out / "judges.json").write_text(json.dumps(quality, indent=2))
    return Judges.load(judge_file)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_grid(out: Path, data_root: Path, model: Path, grid: Grid) -> None:
    for domain in grid.domains:
        progress(f"{domain}: rewardsft study")
        record = study_domain(out / domain, data_root / domain, model, grid)
        progress(f"{domain}: judging the samples of the verdict's runs")
        judge_samples(out / domain, data_root / domain, model, record, grid)


def chitchat_installed() -> bool:
    return importlib.util.find_spec("chitchat_dataset") is not None


def ensure_inputs(out: Path, data_root: Path, model: str | None, source: Path | None, quick: bool) -> Path:
    """Data under ``data_root`` (prepared once) and the model: ``--model`` or SmolLM2 converted into ``out``."""
    if not (data_root / "prepare.json").is_file():
        sizes = Sizes(demonstrations=QUICK.demonstrations, pairs=8) if quick else Sizes()
        prepare(data_root, source, sizes, seed=0, chitchat=chitchat_installed())
    if model:
        return Path(model)
    from rewardsft.offline import write_smollm2

    folder = out / "smollm2"
    if not (folder / "config.json").is_file():
        write_smollm2(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write demonstrations, held-out pairs and the judge split per domain")
    prep.add_argument("--out", default="runs/study/data")
    prep.add_argument("--source", help="the vaderSentiment-3.3.2 sdist (default: pip download it)")
    prep.add_argument("--demonstrations", type=int, default=Sizes.demonstrations)
    prep.add_argument("--pairs", type=int, default=Sizes.pairs)
    prep.add_argument("--seed", type=int, default=0)
    for name, text in (("run", "rewardsft study per domain, then judge (resumable)"), ("all", "run, then summarize")):
        run_p = sub.add_parser(name, help=text)
        run_p.add_argument("--out", default="runs/study")
        run_p.add_argument("--data", help="prepared data folder (default: OUT/data)")
        run_p.add_argument("--model", help="base model folder or hub id (default: SmolLM2-135M-Instruct, offline)")
        run_p.add_argument("--source", help="the vaderSentiment-3.3.2 sdist (default: pip download it)")
        run_p.add_argument("--quick", action="store_true", help="a smoke test: 16 demonstrations, one seed")
        run_p.add_argument("--domains", help="comma-separated (default: tweets,amazon,chitchat)")
    summ = sub.add_parser("summarize", help="results.json and results.md from the finished studies")
    summ.add_argument("--out", default="runs/study")
    summ.add_argument("--quick", action="store_true")
    summ.add_argument("--domains", help="comma-separated (default: tweets,amazon,chitchat)")
    args = parser.parse_args()
    if args.command == "prepare":
        source = Path(args.source) if args.source else None
        sizes = Sizes(args.demonstrations, args.pairs)
        counts = prepare(Path(args.out), source, sizes, args.seed, chitchat=chitchat_installed())
        print(json.dumps(counts, indent=2))
        return
    out = Path(args.out)
    grid = QUICK if args.quick else Grid()
    if args.domains:
        grid = replace(grid, domains=tuple(args.domains.split(",")))
    if args.command in ("run", "all"):
        data_root = Path(args.data) if args.data else out / "data"
        model = ensure_inputs(out, data_root, args.model, Path(args.source) if args.source else None, args.quick)
        run_grid(out, data_root, model, grid)
    if args.command in ("summarize", "all"):
        from benchmarks.study_summary import summarize

        print(f"summary: {summarize(out, grid)}")


if __name__ == "__main__":
    main()
