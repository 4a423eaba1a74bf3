"""Does the implicit audit flag better with a per-prompt baseline? (issue 24: "β·log π_θ/π_ref of the row against
the same of the model's own sample for its prompt")

On the demo's task (as ``benchmarks.audit_evidence``: its bases, noisy files, learning rates and folds), the
implicit audit is run three ways, each score z-scored within its fold and flagged at the injected share P:

- ``raw``: the row's reward alone (``--against-samples 0``, the audit's default);
- ``minus one sample``: the row's reward minus that of one start-model sample for its prompt (``--against-samples
  1``);
- ``minus the mean of N``: minus the mean over N samples (``--against-samples N``).

``python -m benchmarks.audit_sample_baseline --out runs/audit-evidence`` (the bases and noisy files of
``benchmarks.audit_evidence``, reused where that ran; resumable: finished audits are kept); writes
``OUT/audit_sample_baseline.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.audit_evidence import GENERATE, RUN, SEEDS, SETTINGS, SHARES, base_for, noisy_data

SCORES = ("raw", "minus one sample", "minus the mean of N")


def run(out: Path, n: int) -> dict[str, Any]:
    import rewardsft
    from rewardsft.audits.folds import precision_recall
    from rewardsft.demo.evaluate import task_accuracy
    from rewardsft.demo.task import is_habit

    began, results, habit = time.time(), [], {}
    overrides = [*RUN, *GENERATE, *SETTINGS["implicit"]]
    for seed in SEEDS:
        base = base_for(out, seed)
        # how often the base's own samples copy (on the task's held-out prompts): what "model-like" means here
        test = noisy_data(out, seed, SHARES[0]).parent / "test.jsonl"
        habit[seed] = task_accuracy(str(base), test, None, seed)["sample_habit"]
        for share in SHARES:
            data = noisy_data(out, seed, share)
            rows = [json.loads(line) for line in data.read_text().splitlines()]
            found = {}
            for name, samples in zip(SCORES, (0, 1, n), strict=True):
                # the raw audit is audit_evidence's own (same settings); the others differ only by --against-samples
                tag = "audit-implicit" if samples == 0 else f"audit-implicit-against{samples}"
                folder = out / f"{tag}-s{seed}-p{share:g}"
                rewardsft.audit(
                    base, data, folder, reward="implicit", folds=5, flag_share=share, seed=seed, overrides=overrides,
                    against_samples=samples,
                )  # fmt: skip
                entries = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
                bad = [is_habit(rows[e["row"] - 1]["prompt"], rows[e["row"] - 1]["completion"]) for e in entries]
                found[name] = precision_recall([e["flagged"] for e in entries], bad)[0]
            results.append({"seed": seed, "share": share, **found})
            print(f"[{time.time() - began:.0f}s] seed {seed} P={share:g}: {results[-1]}", flush=True)
    return {"samples": n, "base_sample_habit": habit, "results": results, "minutes": (time.time() - began) / 60}


def markdown(record: dict[str, Any]) -> str:
    n = record["samples"]
    lines = [
        "# The implicit audit with a per-prompt baseline (the demo's task, habitual copies injected)",
        "",
        f"Precision of the flagged share (= P; chance = P), mean ± sd over seeds and per seed; N = {n} samples.",
        "",
        "| P | " + " | ".join(s.replace("N", str(n)) for s in SCORES) + " | seeds |",
        "|---|" + "---|" * (len(SCORES) + 1),
    ]
    for share in sorted({r["share"] for r in record["results"]}):
        group = [r for r in record["results"] if r["share"] == share]
        cells = []
        for name in SCORES:
            values = [r[name] for r in group]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.2f} ± {sd:.2f} ({', '.join(f'{v:.2f}' for v in values)})")
        lines.append(f"| {share:g} | " + " | ".join(cells) + f" | {len(group)} |")
    habit = ", ".join(f"{float(v):.2f}" for v in record["base_sample_habit"].values())
    lines += [
        "",
        f"Share of the base's samples that copy (seeds {', '.join(map(str, record['base_sample_habit']))}): {habit}.",
    ]
    lines += ["", f"Wall time: {record['minutes']:.1f} min (this launch).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/audit-evidence", help="benchmarks.audit_evidence's --out")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (N)")
    args = parser.parse_args()
    record = run(Path(args.out), args.samples)
    Path(args.out, "audit_sample_baseline.json").write_text(json.dumps(record, indent=2))
    text = markdown(record)
    Path(args.out, "audit_sample_baseline.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
