"""Evidence for ``rewardsft audit`` (issue 24) on the demo's task: a share P of the demonstrations replaced by the
base's habitual copy; precision and recall of the flagged share (P) for the explicit and implicit rewards, against
the baselines a user tries first (the base model's per-token likelihood of the row: flag the least likely; the
response length: flag the shortest), over seeds.

``python -m benchmarks.audit_evidence --out runs/audit-evidence`` (resumable: finished audits are kept); writes
``OUT/audit_evidence.json`` and ``OUT/audit_evidence.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

SHARES = (0.1, 0.25, 0.5)
SEEDS = (0, 1, 2)
SETTINGS = {
    "explicit": ["reward_model.lr=1e-3", "rft.samples_per_prompt=2"],
    "implicit": ["optim.name=adamw", "optim.lr=1e-3"],
}
"""Each reward's learning rate: the demo's own (adamw 1e-3 for the policy and the reward model, docs/LOG.md)."""
RUN = ["train.batch_size=16", "train.save_every=100000"]
GENERATE = ["generation.max_new_tokens=12", "generation.batch_size=64"]


def base_for(out: Path, seed: int) -> Path:
    """The demo's base model for ``seed`` (its default task sizes: 3000 pre-training prompts, 40% copies)."""
    from rewardsft.demo.run import DemoSettings, make_base
    from rewardsft.demo.task import write_task

    folder = out / f"base-s{seed}"
    final = folder / "base" / "final"
    if not final.is_dir():
        settings = DemoSettings(seed=seed)
        make_base(folder, write_task(folder / "data", settings.sizes, seed), settings)
    return final


def noisy_data(out: Path, seed: int, share: float) -> Path:
    from rewardsft.demo.run import DemoSettings
    from rewardsft.demo.task import write_task

    return write_task(out / f"data-s{seed}-p{share:g}", DemoSettings().sizes, seed, noise=share).demonstrations


def measure(scores: list[dict[str, Any]], rows: list[dict[str, Any]], share: float) -> dict[str, Any]:
    from rewardsft.demo.task import is_habit

    bad = [is_habit(rows[e["row"] - 1]["prompt"], rows[e["row"] - 1]["completion"]) for e in scores]
    return against_baselines(scores, rows, bad, share)


def against_baselines(
    scores: list[dict[str, Any]], rows: list[dict[str, Any]], bad: list[bool], share: float
) -> dict[str, Any]:
    """Precision and recall against the known ``bad`` rows (aligned with ``scores``) of the audit's flagged share
    and of the baselines a user tries first: the base model's per-token likelihood (both ends) and length."""
    from rewardsft.audits.folds import flag, precision_recall

    likelihood = [e["baseline_logp_per_token"] if e["baseline_logp_per_token"] is not None else -1e9 for e in scores]
    length = [float(len(rows[e["row"] - 1]["completion"])) for e in scores]
    flagged = {
        "audit": [e["flagged"] for e in scores],
        "least likely under the base": flag(likelihood, share),
        "most likely under the base": flag([-v for v in likelihood], share),
        "shortest": flag(length, share),
    }
    return {
        name: dict(zip(("precision", "recall"), precision_recall(f, bad), strict=True)) for name, f in flagged.items()
    }


def run(out: Path, seeds: tuple[int, ...], shares: tuple[float, ...], rewards: tuple[str, ...]) -> dict[str, Any]:
    import rewardsft

    results: list[dict[str, Any]] = []
    began = time.time()
    for seed in seeds:
        base = base_for(out, seed)
        for share in shares:
            data = noisy_data(out, seed, share)
            rows = [json.loads(line) for line in data.read_text().splitlines()]
            for reward in rewards:
                folder = out / f"audit-{reward}-s{seed}-p{share:g}"
                overrides = [*RUN, *GENERATE, *SETTINGS[reward]]
                rewardsft.audit(
                    base, data, folder, reward=reward, folds=5, flag_share=share, seed=seed, overrides=overrides
                )
                scores = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
                results.append({"seed": seed, "share": share, "reward": reward, **measure(scores, rows, share)})
                print(
                    f"[{time.time() - began:.0f}s] seed {seed} P={share:g} {reward}: {results[-1]['audit']}", flush=True
                )
    return {"results": results, "minutes": (time.time() - began) / 60}


TRAIN_SHARES = (0.1, 0.25)


def train_on(out: Path, base: Path, data: Path, seed: int, steps: int, test: Path) -> dict[str, float]:
    """The demo's SFT (AdamW 1e-3) on ``data`` for exactly ``steps`` steps, judged on the test prompts."""
    from rewardsft.config import load_config
    from rewardsft.demo.evaluate import task_accuracy
    from rewardsft.demo.run import COMMON
    from rewardsft.recipes import run_recipe

    summary = out / "eval" / "summary.json"
    if not summary.is_file():
        overrides = [f"model.name_or_path={base}", f"data.path={data}", f"output_dir={out}", f"seed={seed}"]
        settings = [*COMMON, "optim.lr=1e-3", f"train.max_steps={steps}"]
        run_recipe(load_config("sft", overrides=[*overrides, *settings, "overwrite=true"]))
        task_accuracy(str(out / "final"), test, out / "eval", seed=seed)
    record = json.loads(summary.read_text())
    return {m: record[m] for m in ("greedy_correct", "sample_correct", "sample_habit")}


def training(out: Path, seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """SFT on the noisy file, on the audit's clean.jsonl and on the truly clean rows, at the same steps."""
    from rewardsft.demo.task import is_habit

    results = []
    for seed in seeds:
        base = base_for(out, seed)
        for share in TRAIN_SHARES:
            folder = out / f"data-s{seed}-p{share:g}"
            noisy = folder / "demonstrations.jsonl"
            rows = [json.loads(line) for line in noisy.read_text().splitlines()]
            oracle = folder / "oracle-clean.jsonl"
            oracle.write_text("".join(json.dumps(r) + "\n" for r in rows if not is_habit(r["prompt"], r["completion"])))
            steps = 2 * -(-len(rows) // 16)  # the demo's SFT: two passes at batch 16 over the noisy file
            files = {
                "noisy file": ("noisy", noisy),
                "audit's clean.jsonl": ("audited", out / f"audit-implicit-s{seed}-p{share:g}" / "clean.jsonl"),
                "bad rows removed (oracle)": ("oracle", oracle),
            }
            for name, (tag, data) in files.items():
                accuracy = train_on(
                    out / f"sft-{tag}-s{seed}-p{share:g}", base, data, seed, steps, folder / "test.jsonl"
                )
                results.append({"seed": seed, "share": share, "data": name, "steps": steps, **accuracy})
    return results


def training_markdown(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Does SFT on clean.jsonl beat SFT on the noisy file? (same steps)",
        "",
        "| P | trained on | greedy accuracy | sampled accuracy | habit share of samples | seeds "
        "| sampled accuracy − the noisy file's, per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for share in sorted({r["share"] for r in results}):
        for name in dict.fromkeys(r["data"] for r in results):
            group = [r for r in results if r["share"] == share and r["data"] == name]
            cells = []
            for metric in ("greedy_correct", "sample_correct", "sample_habit"):
                values = [r[metric] for r in group]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.fmean(values):.3f} ± {sd:.3f}")
            noisy = {
                r["seed"]: r["sample_correct"] for r in results if r["share"] == share and r["data"] == "noisy file"
            }
            paired = ", ".join(f"{r['sample_correct'] - noisy[r['seed']]:+.3f}" for r in group)
            lines.append(f"| {share:g} | {name} | " + " | ".join(cells) + f" | {len(group)} | {paired} |")
    return [*lines, ""]


def summary_markdown(record: dict[str, Any]) -> str:
    lines = [
        "# Audit evidence: the demo's task, habitual copies injected",
        "",
        "Precision of the flagged share (= P) over seeds (mean ± sd; chance = P). Baselines flag by the base model's",
        "per-token likelihood of the row (both directions) and by response length.",
        "",
        "| P | reward | audit | least likely under the base | most likely under the base | shortest | seeds "
        "| audit − least likely, per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["share"], r["reward"]) for r in record["results"]})
    for share, reward in keys:
        group = [r for r in record["results"] if r["share"] == share and r["reward"] == reward]

        def cell(name: str, group: list[dict[str, Any]] = group) -> str:
            values = [r[name]["precision"] for r in group]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.2f} ± {sd:.2f}"

        paired = ", ".join(
            f"{r['audit']['precision'] - r['least likely under the base']['precision']:+.2f}" for r in group
        )
        lines.append(
            f"| {share:g} | {reward} | {cell('audit')} | {cell('least likely under the base')} | "
            f"{cell('most likely under the base')} | {cell('shortest')} | {len(group)} | {paired} |"
        )
    lines += ["", *training_markdown(record.get("training", []))] if record.get("training") else [""]
    lines += [f"Wall time: {record['minutes']:.1f} min (this launch).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/audit-evidence")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--shares", default=",".join(map(str, SHARES)))
    parser.add_argument("--rewards", default="explicit,implicit")
    parser.add_argument("--summarize", action="store_true", help="rewrite the Markdown from OUT/audit_evidence.json")
    args = parser.parse_args()
    if args.summarize:
        record = json.loads((Path(args.out) / "audit_evidence.json").read_text())
        (Path(args.out) / "audit_evidence.md").write_text(summary_markdown(record))
        print(summary_markdown(record))
        return
    import torch

    torch.set_num_threads(1)  # tiny models: one thread is faster, and leaves a core free
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    shares = tuple(float(s) for s in args.shares.split(","))
    began = time.time()
    record = run(out, seeds, shares, tuple(args.rewards.split(",")))
    if "implicit" in args.rewards:
        record["training"] = training(out, seeds)
    record["minutes"] = (time.time() - began) / 60
    (out / "audit_evidence.json").write_text(json.dumps(record, indent=2))
    (out / "audit_evidence.md").write_text(summary_markdown(record))
    print(summary_markdown(record))


if __name__ == "__main__":
    main()
