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

Stage 2, ``run``: the grid (base, SFT, SPIN, IRFT T=2/4, RFT, and the sweep) trained through the public CLI
(``rewardsft train``), each run evaluated as soon as it finishes (``rewardsft eval gap`` on the held-out pairs;
samples judged by :mod:`benchmarks.study_judges`), resumable: a run with ``final/`` and its evaluations is
skipped. Stage 3, ``summarize``: ``results.json``, ``results.md`` and the paired report (``rewardsft report
--baseline``). ``all`` does the three.

    make study          # installs the judges and SmolLM2, then: python -m benchmarks.real_study all
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
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rewardsft.studies.runner import record_launch

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


def prepare(out: Path, source: Path | None, sizes: Sizes, seed: int) -> dict[str, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        sdist = source or download_sdist(Path(tmp))
        domains = read_domains(sdist)
    counts = {d: write_domain(out / d, d, split_domain(snippets, sizes, seed)) for d, snippets in domains.items()}
    (out / "prepare.json").write_text(json.dumps({"seed": seed, "sizes": vars(sizes), "counts": counts}, indent=2))
    return counts


# ---------------------------------------------------------------- stage 2: the grid


@dataclass(frozen=True)
class Spec:
    """One run of the grid: ``rewardsft train METHOD`` with these overrides, from the base or the SFT run."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    start: str = "base"
    """``base`` or ``sft`` (the SFT run of the same seed: the paper's zephyr runs start from an SFT model)."""


@dataclass(frozen=True)
class Budget:
    demonstrations: int = 128
    max_new_tokens: int = 48
    eval_samples: int = 64
    rft_iterations: int = 10
    seeds: tuple[int, ...] = (0, 1)
    domains: tuple[str, ...] = ("tweets", "amazon")
    sweep_domain: str = "tweets"


QUICK = Budget(demonstrations=16, max_new_tokens=8, eval_samples=6, rft_iterations=2, seeds=(0,), domains=("tweets",))
LR = "1e-5"
"""The main grid's learning rate for every method: SFT's (the pilot's), so SFT and reward learning take equal steps;
the sweep tries the paper's smaller ones."""

MAIN = (
    Spec("sft", "sft", (f"optim.lr={LR}",)),
    Spec("spin", "irft", ("irft.stages=1", f"optim.lr={LR}")),
    Spec("irft-t2", "irft", ("irft.stages=2", f"optim.lr={LR}")),
    Spec("irft-t4", "irft", ("irft.stages=4", f"optim.lr={LR}")),
    Spec("rft", "rft", (f"optim.lr={LR}", f"reward_model.lr={LR}", "rft.samples_per_prompt=2")),
)
SWEEP = (
    Spec("spin-lr5e-7", "irft", ("irft.stages=1", "optim.lr=5e-7")),
    Spec("spin-lr1e-6", "irft", ("irft.stages=1", "optim.lr=1e-6")),
    Spec("spin-beta1", "irft", ("irft.stages=1", f"optim.lr={LR}", "irft.beta=1.0")),
    Spec("spin-sftw1", "irft", ("irft.stages=1", f"optim.lr={LR}", "irft.sft_weight=1.0")),
    Spec("spin-from-sft", "irft", ("irft.stages=1", f"optim.lr={LR}"), start="sft"),
    # The control for starting from SFT: SFT + SPIN sees the demonstrations twice, so SFT gets two passes too.
    Spec("sft-2ep", "sft", (f"optim.lr={LR}", "train.epochs=2")),
)


def spec_overrides(spec: Spec, budget: Budget, data: Path, start: Path, out: Path, seed: int) -> list[str]:
    common = [
        f"model.name_or_path={start}",
        f"data.path={data / 'demonstrations.jsonl'}",
        f"data.max_rows={budget.demonstrations}",
        "data.text_prompts=user_turn",
        "data.max_length=128",
        "data.max_prompt_length=64",
        "train.batch_size=8",
        "logging.progress=false",
        f"seed={seed}",
        f"output_dir={out}",
    ]
    if spec.method != "sft":
        common += [f"generation.max_new_tokens={budget.max_new_tokens}", "generation.batch_size=64"]
    if spec.method == "rft":
        # One demonstration per prompt slot, each seen once: the same demonstrations as one SFT / IRFT epoch.
        per_round = -(-budget.demonstrations // budget.rft_iterations)
        common += [f"rft.iterations={budget.rft_iterations}", f"rft.prompts_per_iteration={per_round}"]
    return [*common, *spec.overrides]


def cli(*args: str, log: Path) -> None:
    """Run ``rewardsft ARGS`` (the public CLI), output to ``log``; a failure stops the study naming the log."""
    with log.open("a") as handle:
        done = subprocess.run([sys.executable, "-m", "rewardsft", *args], stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"rewardsft {args[0]} {args[1]} failed (exit {done.returncode}); see {log}")


def train(spec: Spec, budget: Budget, domain_dir: Path, model: Path, seed: int) -> Path:
    run = domain_dir / "runs" / f"{spec.name}-s{seed}"
    if (run / "final").is_dir():
        return run
    start = model if spec.start == "base" else domain_dir / "runs" / f"sft-s{seed}" / "final"
    args = spec_overrides(spec, budget, data_dir(domain_dir), start, run, seed)
    resume = ["resume=true"] if (run / "config.yaml").is_file() else []
    began, finished = time.time(), False
    run.parent.mkdir(parents=True, exist_ok=True)
    try:
        cli("train", spec.method, *args, *resume, log=run.parent / f"{run.name}.log")
        finished = True
    finally:
        # A failed or interrupted launch is kept too: its time is part of the run's cost once a resume finishes it.
        # (A study killed outright, e.g. SIGKILL, records nothing for the launch it was in.)
        if run.is_dir():
            record_launch(run, {"start": began, "end": time.time(), "resumed": bool(resume), "finished": finished})
    return run


def data_dir(domain_dir: Path) -> Path:
    return domain_dir.parent / "data" / domain_dir.name


def evaluate(model: Path, domain_dir: Path, budget: Budget, judges: Any, render: list[str]) -> None:
    """Held-out gap (CLI) and judged samples, written under ``model/eval`` (base: ``domain_dir/base/eval``)."""
    target = model if (model / "config.yaml").is_file() else domain_dir / "base"
    gap_dir = target / "eval" / "gap"
    if not (gap_dir / "summary.json").is_file():
        pairs = data_dir(domain_dir) / "pairs.jsonl"
        cli(
            "eval",
            "gap",
            "--model",
            str(model),
            "--data",
            str(pairs),
            "--out",
            str(gap_dir),
            *render,
            log=domain_dir / "eval.log",
        )
    samples_dir = target / "eval" / "samples"
    if not (samples_dir / "health.json").is_file():
        write_samples(model, samples_dir, domain_dir, budget, judges, render)


def write_samples(model: Path, folder: Path, domain_dir: Path, budget: Budget, judges: Any, render: list[str]) -> None:
    from benchmarks.study_judges import sample_health
    from rewardsft.config import GenerationConfig
    from rewardsft.generation import sample_responses
    from rewardsft.layout import rendering_for

    flags = {"text_prompts": "user_turn"} if render else {}
    prompt = DOMAINS[domain_dir.name][1]
    gen = GenerationConfig(max_new_tokens=budget.max_new_tokens, batch_size=64)
    responses = sample_responses(rendering_for(model, **flags), [prompt], gen, seed=EVAL_SEED, n=budget.eval_samples)
    scores = judges.score([r.text for r in responses])
    rows = [{**vars(r), **{k: v[i] for k, v in scores.items()}} for i, r in enumerate(responses)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    demos = demonstration_texts(domain_dir, budget)
    (folder / "health.json").write_text(json.dumps(sample_health(rows, demos, budget.max_new_tokens), indent=2))


EVAL_SEED = 1234


def demonstration_texts(domain_dir: Path, budget: Budget) -> set[str]:
    lines = (data_dir(domain_dir) / "demonstrations.jsonl").read_text().splitlines()[: budget.demonstrations]
    return {json.loads(line)["completion"].strip() for line in lines}


def run_grid(out: Path, model: Path, budget: Budget, sweep: bool) -> None:
    judges = {domain: domain_judges(out / domain, budget) for domain in budget.domains}
    for domain in budget.domains:
        evaluate(model, out / domain, budget, judges[domain], render=["--text-prompts", "user_turn"])
    for domain, spec, seed in plan(budget, sweep):
        progress(f"{domain}: {spec.name} seed {seed}")
        run = train(spec, budget, out / domain, model, seed)
        evaluate(run, out / domain, budget, judges[domain], render=[])


def domain_judges(domain_dir: Path, budget: Budget) -> Any:
    """Fit (once) and load the domain's judges; their held-out agreement goes to ``judges.json``."""
    from benchmarks.study_judges import Judges, fit_judges

    judge_file = domain_dir / "judges.pt"
    if not judge_file.is_file():
        domain_dir.mkdir(parents=True, exist_ok=True)
        quality = fit_judges(data_dir(domain_dir) / "judge.jsonl", judge_file, 200 if budget is QUICK else None)
        (domain_dir / "judges.json").write_text(json.dumps(quality, indent=2))
    return Judges.load(judge_file)


REPEATED = ("sft", "spin", "irft-t4")
"""The runs repeated at further seeds: SFT, the best reward-learning method of the first seed and the one that
collapsed. RFT and IRFT T=2 run at the first seed only (on 2 CPU cores an RFT run costs about three IRFT runs)."""


def plan(budget: Budget, sweep: bool) -> list[tuple[str, Spec, int]]:
    """Most information first: per domain (the sweep domain first), the first seed of every method but RFT, the
    sweep, the repeated seeds, then RFT (the costliest run). A study cut short by time keeps whole seeds."""
    out = []
    ordered = [budget.sweep_domain, *(d for d in budget.domains if d != budget.sweep_domain)]
    for domain in (d for d in ordered if d in budget.domains):
        out += [(domain, spec, budget.seeds[0]) for spec in MAIN if spec.method != "rft"]
        if sweep and domain == budget.sweep_domain:
            out += [(domain, spec, budget.seeds[0]) for spec in SWEEP]
        repeated = [spec for spec in MAIN if spec.name in REPEATED]
        out += [(domain, spec, seed) for seed in budget.seeds[1:] for spec in repeated]
        out += [(domain, spec, budget.seeds[0]) for spec in MAIN if spec.method == "rft"]
    return out


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_inputs(out: Path, model: str | None, source: Path | None, quick: bool) -> Path:
    """Data under ``out/data`` (prepared once) and the model: ``--model`` or SmolLM2 converted into ``out``."""
    if not (out / "data" / "prepare.json").is_file():
        sizes = Sizes(demonstrations=QUICK.demonstrations, pairs=8) if quick else Sizes()
        prepare(out / "data", source, sizes, seed=0)
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
    for name, text in (("run", "train and evaluate the grid (resumable)"), ("all", "run, then summarize")):
        grid = sub.add_parser(name, help=text)
        grid.add_argument("--out", default="runs/study")
        grid.add_argument("--model", help="base model folder or hub id (default: SmolLM2-135M-Instruct, offline)")
        grid.add_argument("--source", help="the vaderSentiment-3.3.2 sdist (default: pip download it)")
        grid.add_argument("--quick", action="store_true", help="a smoke test: 16 demonstrations, one seed, no sweep")
        grid.add_argument("--seeds", type=int, default=len(Budget.seeds))
        grid.add_argument("--no-sweep", action="store_true")
    summ = sub.add_parser("summarize", help="results.json, results.md and the paired report from finished runs")
    summ.add_argument("--out", default="runs/study")
    summ.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.command == "prepare":
        source = Path(args.source) if args.source else None
        counts = prepare(Path(args.out), source, Sizes(args.demonstrations, args.pairs), args.seed)
        print(json.dumps(counts, indent=2))
        return
    out = Path(args.out)
    budget = QUICK if args.quick else Budget()
    if args.command in ("run", "all"):
        budget = replace(budget, seeds=tuple(range(args.seeds))) if not args.quick else budget
        model = ensure_inputs(out, args.model, Path(args.source) if args.source else None, args.quick)
        run_grid(out, model, budget, sweep=not (args.quick or args.no_sweep))
    if args.command in ("summarize", "all"):
        from benchmarks.study_summary import summarize

        print(f"summary: {summarize(out, budget)}")


if __name__ == "__main__":
    main()
