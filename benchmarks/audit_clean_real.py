"""Does SFT on the audit's ``clean.jsonl`` beat SFT on the noisy file, on real data? (issue 24, the user's question)

For every finished real-data audit of ``benchmarks.audit_real`` (tweets with a quarter of the 128 demonstrations
replaced by human text that does not belong, ``OUT/tweets-KIND-sSEED``), SFT from the base on three files, at the
same number of steps (the noisy file's one pass: 16 steps of 8; the shorter files repeat their rows to fill
them):

- the noisy file itself;
- the audit's ``clean.jsonl`` (its flagged quarter removed), and with ``--explicit`` the explicit reward's audit's
  where it finished (``OUT/tweets-KIND-sSEED-explicit``);
- the noisy file with exactly the injected rows removed (the oracle: what a perfect audit would leave);
- the noisy file with as many rows removed at random (the control: the same repetition of fewer rows, the mix
  unchanged; whatever a file gains beyond it comes from *which* rows were removed).

The SFT settings are the study's tuned SFT on the tweets (``docs/results/evidence/tweets/study.json``: its lr, one
pass, the study's rendering and constant schedule), chosen on the study's dev pairs, never on these files. Each run
is judged like every study arm: the held-out log-prob gap on the study's test pairs, paired by pair, seeds pooled,
each file against the noisy one; per seed, each file against that seed's noisy file (the same noisy rows).

``python -m benchmarks.audit_clean_real --audits runs/audit-real --study /work/runs/evidence/tweets --data
runs/data`` (resumable: finished runs and evaluations are kept); writes ``AUDITS/audit_clean_real.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.audit_real import KINDS, noisy_rows, rows_of
from benchmarks.real_study import Grid, overrides
from benchmarks.rft_budget import evaluate_test_gap

NOISY = "noisy file"
FILES = (
    NOISY,
    "audit's clean.jsonl",
    "explicit audit's clean.jsonl",
    "injected rows removed (oracle)",
    "as many rows removed at random (control)",
)
CONTROL = FILES[-1]
TAGS = dict(zip(FILES, ("noisy", "audit's", "explicit", "injected", "random"), strict=True))


def sft_setting(study: Path) -> float:
    """The study's chosen SFT learning rate on this domain (dev pairs)."""
    chosen = json.loads((study / "study.json").read_text())["chosen"]["sft"]  # "lr=0.001 passes=1"
    return float(dict(part.split("=") for part in chosen.split())["lr"])


def train(data: Path, out: Path, base: Path, lr: float, seed: int, steps: int) -> Path:
    """SFT of ``steps`` steps on ``data`` (kept if finished; a stopped one starts again: each is a minute)."""
    import shutil

    from rewardsft.config import load_config
    from rewardsft.recipes import run_recipe

    if (out / "final").is_dir():
        return out
    shutil.rmtree(out, ignore_errors=True)
    grid = Grid()
    settings = [
        *(o for o in overrides(grid) if not o.startswith(("data.max_rows", "generation."))),
        f"model.name_or_path={base}",
        f"data.path={data}",
        f"output_dir={out}",
        f"seed={seed}",
        "optim.name=adamw",
        f"optim.lr={lr}",
        "train.epochs=3",  # enough passes for the shorter files to fill the steps
        f"train.max_steps={steps}",
        "train.save_every=100000",
        "logging.progress=false",
    ]
    run_recipe(load_config("sft", overrides=settings))
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # only final/ is read: 1.6 GB per run at 135M
    return out


def files_for(folder: Path, rows: list[dict[str, Any]], bad: set[int], seed: int, explicit: bool) -> dict[str, Path]:
    """The files trained on for one noisy file (with ``explicit``, the explicit audit's too where it finished)."""
    audited = folder / "audit" / "clean.jsonl"
    removed = len(rows) - len(rows_of(audited))
    dropped = set(random.Random(f"random-control-{seed}").sample(range(len(rows)), removed))
    keep = {"injected rows removed (oracle)": bad, "as many rows removed at random (control)": dropped}
    files = {NOISY: folder / "noisy.jsonl", "audit's clean.jsonl": audited}
    explicit_file = folder.with_name(folder.name + "-explicit") / "audit" / "clean.jsonl"
    if explicit_file.is_file() and explicit:
        files["explicit audit's clean.jsonl"] = explicit_file
    for name, drop in keep.items():
        path = folder / f"{TAGS[name]}-clean.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for i, r in enumerate(rows) if i not in drop))
        files[name] = path
    return files


def paired(
    name: str, runs: list[Path], runs_of_base: list[Path], base_name: str = NOISY, n_resamples: int = 2000
) -> list[dict[str, Any]]:
    """Every study metric of ``runs`` (seeds pooled) against ``runs_of_base`` of the same seeds, paired by pair."""
    from rewardsft.eval.paired import Group, compare_groups

    base = Group(base_name, runs_of_base)
    return compare_groups([Group(name, runs), base], base, "test-gap", n_resamples=n_resamples)


def run(args: argparse.Namespace) -> dict[str, Any]:
    audits, study, began = Path(args.audits), Path(args.study), time.time()
    lr = sft_setting(study)
    runs: dict[str, dict[str, dict[int, Path]]] = {kind: {name: {} for name in FILES} for kind in KINDS}
    for kind in KINDS:
        for seed in range(args.seeds):
            folder = audits / f"tweets-{kind}-s{seed}"
            if not (folder / "audit" / "clean.jsonl").is_file():
                print(f"{folder}: no finished audit, left out", flush=True)
                continue
            rows, bad = noisy_rows(Path(args.data), "tweets", kind, args.share, args.rows, seed)
            if rows != rows_of(folder / "noisy.jsonl"):
                raise SystemExit(f"{folder}/noisy.jsonl is not what --data, --share and --rows rebuild")
            steps = len(rows) // Grid().batch_size
            for name, data in files_for(folder, rows, bad, seed, args.explicit).items():
                out = train(data, folder / "clean-train" / f"sft-{TAGS[name]}", Path(args.model), lr, seed, steps)
                evaluate_test_gap(out, study)
                runs[kind][name][seed] = out
                print(f"[{time.time() - began:.0f}s] {kind} seed {seed}: {name} trained and judged", flush=True)
    rows_out = []
    for kind, by_file in runs.items():
        noisy = by_file[NOISY]
        for name, by_seed in by_file.items():
            if name == NOISY or not by_seed:
                continue
            seeds = sorted(by_seed)
            # seeds pooled against the same seeds' noisy files, paired by pair; then each seed against its own
            per_seed = [paired(name, [by_seed[s]], [noisy[s]], n_resamples=1) for s in seeds]
            for row in paired(name, [by_seed[s] for s in seeds], [noisy[s] for s in seeds]):
                matched = [next(r["mean"] for r in one if r["metric"] == row["metric"]) for one in per_seed]
                rows_out.append({**row, "kind": kind, "seed_list": seeds, "per_seed_vs_own_noisy": matched})
            control = by_file[CONTROL]
            if name != CONTROL and all(s in control for s in seeds):
                # against the random control: what *which* rows were removed adds to removing as many
                mine, theirs = [by_seed[s] for s in seeds], [control[s] for s in seeds]
                for row in paired(name, mine, theirs, CONTROL):
                    rows_out.append({**row, "kind": kind, "against": CONTROL})
    return {"sft_lr": lr, "rows": rows_out, "minutes": (time.time() - began) / 60}


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "# SFT on the audit's clean.jsonl against SFT on the noisy file (tweets, real data)",
        "",
        f"SFT from the base at the study's tuned lr ({record['sft_lr']:g}), the noisy file's one pass of steps for "
        "every file; Δ against SFT on the noisy file on the study's test pairs, paired by pair, seeds pooled "
        "(per seed: against that seed's noisy file). Δ held-out gap in nats; Δ log-likelihood per token of the "
        "held-out demonstrations (the chosen side).",
        "",
        "| injected rows | trained on | Δ gap vs noisy file | 95% CI | verdict | per seed | Δ log-lik. per token "
        "| 95% CI | verdict | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["kind"], r["group"], r["metric"]): r for r in record["rows"] if "against" not in r}
    for (kind, group, metric), row in by_key.items():
        if metric != "gap":
            continue
        loglik = by_key[(kind, group, "chosen_logp_mean")]
        cells = []
        for r, fmt in ((row, "{:+.2f}"), (loglik, "{:+.3f}")):
            lo, hi = r["ci95"]
            cells.append(f"{fmt.format(r['mean'])} | [{fmt.format(lo)}, {fmt.format(hi)}] | {r['verdict']}")
        per_seed = ", ".join(f"{v:+.1f}" for v in row["per_seed_vs_own_noisy"])
        lines.append(f"| {kind} | {group} | {cells[0]} | {per_seed} | {cells[1]} | {row['seeds']} |")
    lines += [
        "",
        "Against the random control (the same number of rows removed at random, same seeds), Δ held-out gap:",
        "",
        "| injected rows | trained on | Δ gap vs random removal | 95% CI | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        if "against" in row and row["metric"] == "gap":
            lo, hi = row["ci95"]
            lines.append(
                f"| {row['kind']} | {row['group']} | {row['mean']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {row['verdict']} |"
            )
    lines += ["", f"Wall time: {record['minutes']:.1f} min on this machine (this launch; finished runs are kept).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audits", default="runs/audit-real", help="benchmarks.audit_real's --out")
    parser.add_argument("--study", default="/work/runs/evidence/tweets", help="the tweets study folder")
    parser.add_argument("--data", default="runs/data", help="the study's prepared data (benchmarks.real_study)")
    parser.add_argument("--model", default="runs/smollm2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--share", type=float, default=0.25)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--explicit", action="store_true", help="also train on the explicit audits' clean.jsonl")
    args = parser.parse_args()
    record = run(args)
    Path(args.audits, "audit_clean_real.json").write_text(json.dumps(record, indent=2, default=str))
    text = markdown(record)
    Path(args.audits, "audit_clean_real.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
