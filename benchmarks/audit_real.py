"""Evidence for ``rewardsft audit`` on real data (issue 24, part b): the study's tweets (or Amazon reviews) with a
share P of the demonstrations replaced by human text that does not belong, then audited out of fold; precision and
recall of the flagged share against the injected rows, beside the baselines a user tries first (the base model's
per-token likelihood of the row, response length).

Two kinds of bad rows, both human-written and never among the demonstrations:
- ``negative``: snippets of the same source rated ≤ −2 by its human raters (``judge.jsonl``), under the domain's
  own (positive) prompt;
- ``off-topic``: demonstrations of the other domain (Amazon snippets among tweets, or the reverse).

The implicit reward's learning rate is the study's own choice for SPIN from the base on that domain (tuned on its
dev pairs, ``docs/results/evidence/DOMAIN/study.json``), never on the injected labels. The explicit reward
(``--reward explicit``) takes ``--reward-lr`` for its reward model: 1e-4 by default, the rate at which RFT's reward
model on the tweets separated held-out demonstrations from the policy's samples in the fair-budget run
(``benchmarks.rft_budget``, docs/results.md; at 1e-5 it stayed at chance), again not chosen on the injected labels. ``python -m
benchmarks.audit_real --out runs/audit-real`` (resumable: finished audits are kept; ``--quick`` for a smoke run);
writes ``OUT/audit_real.json`` and ``OUT/audit_real.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.audit_evidence import against_baselines, summary_markdown
from benchmarks.real_study import RENDER

KINDS = ("negative", "off-topic")
OTHER = {"tweets": "amazon", "amazon": "tweets"}
NEGATIVE_RATING = -2.0
STUDY = Path(__file__).resolve().parents[1] / "docs" / "results" / "evidence"


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def noisy_rows(data: Path, domain: str, kind: str, share: float, n: int, seed: int) -> tuple[list[dict], set[int]]:
    """The first ``n`` demonstrations with ``share`` of them (chosen by ``seed``) replaced; the replaced indices."""
    demos = rows_of(data / domain / "demonstrations.jsonl")[:n]
    seen = {row["completion"] for row in demos}
    if kind == "negative":
        pool = [r["response"] for r in rows_of(data / domain / "judge.jsonl") if r["rating"] <= NEGATIVE_RATING]
    else:
        pool = [r["completion"] for r in rows_of(data / OTHER[domain] / "demonstrations.jsonl")]
    pool = [text for text in dict.fromkeys(pool) if text not in seen]
    rng = random.Random(seed)
    bad = set(rng.sample(range(n), round(share * n)))
    replacements = iter(rng.sample(pool, len(bad)))
    rows = [{**row, "completion": next(replacements)} if i in bad else row for i, row in enumerate(demos)]
    return rows, bad


def measure(scores: list[dict[str, Any]], rows: list[dict[str, Any]], bad: set[int], share: float) -> dict[str, Any]:
    """Precision and recall against the baselines, and (descriptive, not a setting: chosen after the labels were
    seen) those of the audit's *highest*-scored share: where the injected rows sit when the audit misses them."""
    from rewardsft.audits.folds import flag, precision_recall

    # "row" counts the file's rows from 1; ``bad`` holds 0-based indices of the injected rows.
    truth = [e["row"] - 1 in bad for e in scores]
    top = flag([-e["score"] if e["score"] is not None else math.inf for e in scores], share)
    found = dict(zip(("precision", "recall"), precision_recall(top, truth), strict=True))
    return {**against_baselines(scores, rows, truth, share), "highest-scored by the audit": found}


def spin_lr(domain: str) -> float:
    """The learning rate the study chose for SPIN from the base on ``domain`` (dev pairs)."""
    chosen = json.loads((STUDY / domain / "study.json").read_text())["chosen"]["spin"]  # "lr=1e-05 passes=1"
    return float(dict(part.split("=") for part in chosen.split())["lr"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    import rewardsft

    out, began, results = Path(args.out), time.time(), []
    lr = args.lr if args.lr is not None else spin_lr(args.domain)
    overrides = [
        *(f"data.{key}={value}" for key, value in RENDER.items()),
        "train.batch_size=8",
        f"generation.max_new_tokens={args.max_new_tokens}",
        "generation.batch_size=64",
    ]
    if args.reward == "implicit":
        overrides += ["optim.name=adamw", "optim.schedule=constant", f"optim.lr={lr}"]
    else:
        overrides += [f"reward_model.lr={args.reward_lr}"]
    suffix = "" if args.reward == "implicit" else "-explicit"
    seeds = [int(x) for x in args.seed_list.split(",")] if args.seed_list else range(args.seeds)
    for seed in seeds:
        for kind in args.kinds.split(","):
            rows, bad = noisy_rows(Path(args.data), args.domain, kind, args.share, args.rows, seed)
            folder = out / f"{args.domain}-{kind}-s{seed}{suffix}"
            folder.mkdir(parents=True, exist_ok=True)
            data = folder / "noisy.jsonl"
            data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
            audit = folder / "audit"
            started = time.time()
            rewardsft.audit(
                args.model, data, audit, reward=args.reward, folds=args.folds, passes=args.passes,
                flag_share=args.share, seed=seed, overrides=overrides,
            )  # fmt: skip
            scores = rows_of(audit / "scores.jsonl")
            minutes = round((time.time() - started) / 60, 1)  # this call's: less than the audit's own if resumed
            results.append({"seed": seed, "share": args.share, "reward": f"{args.reward}, {kind}", "minutes": minutes, **measure(
                scores, rows, bad, args.share
            )})  # fmt: skip
            print(f"[{time.time() - began:.0f}s] seed {seed} {kind}: {results[-1]['audit']}", flush=True)
    lrs = {"spin_lr": lr} if args.reward == "implicit" else {"reward_lr": args.reward_lr}
    return {
        "domain": args.domain,
        "reward": args.reward,
        **lrs,
        "results": results,
        "minutes": (time.time() - began) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/audit-real")
    parser.add_argument("--data", default="runs/data", help="the study's prepared data (benchmarks.real_study)")
    parser.add_argument("--model", default="runs/smollm2")
    parser.add_argument("--domain", default="tweets", choices=sorted(OTHER))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--share", type=float, default=0.25)
    parser.add_argument("--rows", type=int, default=128, help="demonstrations audited (the study's 128)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, help="the implicit reward's lr [the study's SPIN choice]")
    parser.add_argument("--reward", default="implicit", choices=("implicit", "explicit"))
    parser.add_argument("--reward-lr", type=float, default=1e-4, help="the explicit reward model's lr")
    parser.add_argument("--seed-list", help="comma-separated seeds to run (default: 0 .. --seeds - 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 rows, 2 folds, 1 seed, 8 tokens")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.folds, args.seeds, args.max_new_tokens = 16, 2, 1, 8
    record = run(args)
    title = f"# Audit evidence: {args.domain}, human text that does not belong injected"
    markdown = summary_markdown(record).replace("# Audit evidence: the demo's task, habitual copies injected", title)
    name = "audit_real" if args.reward == "implicit" else "audit_real_explicit"
    Path(args.out, f"{name}.json").write_text(json.dumps(record, indent=2))
    Path(args.out, f"{name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
