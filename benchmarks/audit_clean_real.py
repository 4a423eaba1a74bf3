"""Does SFT on the audit's ``clean.jsonl`` beat SFT on the noisy file, on real data? (issue 24, the user's question)

For every finished real-data audit of ``benchmarks.audit_real`` (tweets with a quarter of the 128 demonstrations
replaced by human text that does not belong, ``OUT/tweets-KIND-sSEED``), SFT from the base on three files, at the
same number of steps (the noisy file's one pass: 16 steps of 8; the shorter files repeat their rows to fill
them):

- the noisy file itself;
- the audit's ``clean.jsonl`` (its flagged quarter removed);
- the noisy file with exactly the injected rows removed (the oracle: what a perfect audit would leave).

The SFT settings are the study's tuned SFT on the tweets (``docs/results/evidence/tweets/study.json``: its lr, one
pass, the study's rendering and constant schedule), chosen on the study's dev pairs, never on these files. Each run
is judged like every study arm: the held-out log-prob gap on the study's test pairs, paired by pair, seeds pooled,
each file against the noisy one.

``python -m benchmarks.audit_clean_real --audits runs/audit-real --study /work/runs/evidence/tweets --data
runs/data`` (resumable: finished runs and evaluations are kept); writes ``AUDITS/audit_clean_real.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.audit_real import KINDS, noisy_rows, rows_of
from benchmarks.real_study import Grid, overrides
from benchmarks.rft_budget import evaluate_test_gap

FILES = ("noisy file", "audit's clean.jsonl", "injected rows removed (oracle)")


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rewardsft.eval.paired import Group, compare_groups

    audits, study, began = Path(args.audits), Path(args.study), time.time()
    lr = sft_setting(study)
    runs: dict[str, dict[str, list[Path]]] = {kind: {name: [] for name in FILES} for kind in KINDS}
    for kind in KINDS:
        for seed in range(args.seeds):
            folder = audits / f"tweets-{kind}-s{seed}"
            if not (folder / "audit" / "clean.jsonl").is_file():
                print(f"{folder}: no finished audit, left out", flush=True)
                continue
            rows, bad = noisy_rows(Path(args.data), "tweets", kind, args.share, args.rows, seed)
            if rows != rows_of(folder / "noisy.jsonl"):
                raise SystemExit(f"{folder}/noisy.jsonl is not what --data, --share and --rows rebuild")
            oracle = folder / "oracle-clean.jsonl"
            oracle.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for i, r in enumerate(rows) if i not in bad)
            )
            files = dict(zip(FILES, (folder / "noisy.jsonl", folder / "audit" / "clean.jsonl", oracle), strict=True))
            steps = len(rows) // Grid().batch_size
            for name, data in files.items():
                tag = name.split()[0].strip("'")
                out = train(data, folder / "clean-train" / f"sft-{tag}", Path(args.model), lr, seed, steps)
                evaluate_test_gap(out, study)
                runs[kind][name].append(out)
                print(f"[{time.time() - began:.0f}s] {kind} seed {seed}: {name} trained and judged", flush=True)
    rows_out = []
    for kind, by_file in runs.items():
        if not by_file[FILES[0]]:
            continue
        groups = [Group(name, by_file[name]) for name in FILES]  # seeds pooled, paired by pair and seed
        for row in compare_groups(groups, groups[0], "test-gap"):
            if row["group"] != FILES[0]:
                rows_out.append({**row, "kind": kind})
    return {"sft_lr": lr, "rows": rows_out, "minutes": (time.time() - began) / 60}


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "# SFT on the audit's clean.jsonl against SFT on the noisy file (tweets, real data)",
        "",
        f"SFT from the base at the study's tuned lr ({record['sft_lr']:g}), the noisy file's one pass of steps for "
        "every file; Δ held-out gap (nats) on the study's test pairs against the noisy file, paired by pair, seeds "
        "pooled.",
        "",
        "| injected rows | trained on | Δ gap vs noisy file | 95% CI | seeds | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        if row["metric"] != "gap":
            continue
        lo, hi = row["ci95"]
        lines.append(
            f"| {row['kind']} | {row['group']} | {row['mean']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {row['seeds']} | "
            f"{row['verdict']} |"
        )
    lines += ["", f"Wall time: {record['minutes']:.1f} min on this machine.", ""]
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
    args = parser.parse_args()
    record = run(args)
    Path(args.audits, "audit_clean_real.json").write_text(json.dumps(record, indent=2, default=str))
    text = markdown(record)
    Path(args.audits, "audit_clean_real.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
