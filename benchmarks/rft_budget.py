"""RFT at a fair budget (issue 21): from a finished study's tuned SFT model, RFT runs until its reward model's
held-out accuracy stops rising, and that run is judged beside RFT at the study's matched budget (one pass).

The study's matched budget gives RFT one round per SFT step (16 rounds of 8 prompts on the evidence grid): far
fewer policy steps than the reward model needs to separate demonstrations from samples. Here:

1. a long run (``--rounds``, constant lr without warm-up, so that its first r rounds are exactly a run of r
   rounds) logs ``eval/rm_accuracy`` every ``--eval-every`` rounds on held-out demonstrations (the preferred side
   of the study's dev pairs: no run trained on them, and the test pairs stay unread);
2. r* = the first evaluation after which the next ``--patience`` evaluations do not beat it (the long run's
   last round if the accuracy was still rising, said so);
3. the policies after r* and after the matched rounds, read from the long run's checkpoints (kept at every
   evaluation: with no warm-up and no decay, round r's checkpoint is what a run of r rounds ends on, so nothing is
   trained twice), each evaluated on the study's test pairs and compared, paired by pair, with the study's tuned
   SFT, SFT continued (the control) and SFT -> SPIN of the same seed.

``python -m benchmarks.rft_budget --study /work/runs/evidence/tweets --model /work/runs/smollm2
--out /work/runs/evidence/tweets-rft`` (resumable: finished runs and evaluations are kept), then the results are
in ``OUT/rft_budget.json`` and ``OUT/rft_budget.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.real_study import QUICK, Grid, overrides
from rewardsft.studies.plan import rft_overrides

HELD_OUT_ROWS = 64


@dataclass(frozen=True)
class Budget:
    rounds: int = 64
    eval_every: int = 4
    patience: int = 2
    lr: float = 1e-5
    reward_lr: float = 1e-5
    samples: int = 4
    seed: int = 0


def chosen_run(study: Path, method: str, seed: int) -> Path:
    """The study's run of ``method`` (a name, or the one name that starts with it) at its chosen setting and seed."""
    chosen = json.loads((study / "study.json").read_text())["chosen"]
    names = [name for name in chosen if name == method] or [name for name in chosen if name.startswith(method)]
    if len(names) != 1:
        raise SystemExit(f"{study}: {len(names)} methods match {method!r} ({', '.join(chosen)})")
    method = names[0]
    name = chosen[method].replace("lr=", f"{method}-lr").replace(" passes=", "-p") + f"-s{seed}"
    run = study / "runs" / name
    if not (run / "eval" / "test-gap" / "summary.json").is_file():
        raise SystemExit(f"{run} has no test-gap evaluation: finish the study first")
    return run


def held_out_demonstrations(study: Path, out: Path) -> Path:
    """The preferred side of the study's dev pairs, as demonstrations: r* is a setting chosen on dev, like every
    other choice of the study, and the test pairs stay unread until the runs are judged."""
    rows = [json.loads(line) for line in (study / "split" / "dev.jsonl").read_text().splitlines()][:HELD_OUT_ROWS]
    path = out / "heldout.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["chosen"]}) + "\n" for r in rows))
    return path


def rft_settings(study: Path, start: Path, out: Path, rounds: int, budget: Budget, grid: Grid) -> list[str]:
    return [
        *overrides(grid),
        f"model.name_or_path={start / 'final'}",
        f"data.path={study / 'split' / 'train.jsonl'}",
        f"output_dir={out}",
        f"seed={budget.seed}",
        f"optim.lr={budget.lr}",
        "optim.warmup_ratio=0",
        f"reward_model.lr={budget.reward_lr}",
        f"rft.iterations={rounds}",
        f"rft.prompts_per_iteration={grid.batch_size}",
        f"rft.samples_per_prompt={budget.samples}",
        # A checkpoint at every evaluation, all kept: the fair and matched policies are read from them (and a
        # killed long run resumes near where it was).
        f"train.save_every={budget.eval_every}",
        f"train.keep_checkpoints={rounds // budget.eval_every + 1}",
        "logging.progress=false",
    ]


def train(settings: list[str]) -> Path:
    """An RFT run (resumed if it was stopped; a finished one is kept), continued only with its own settings."""
    from rewardsft.config import load_config
    from rewardsft.recipes import run_recipe
    from rewardsft.studies.runner import check_same_settings

    config = load_config("rft", overrides=settings)
    out = Path(config.output_dir)
    if (out / "config.yaml").is_file():
        check_same_settings(out, config, out.parent)
    if (out / "final").is_dir():
        return out
    resume = ["resume=true"] if out.is_dir() and any(out.iterdir()) else []
    began = time.time()
    run_recipe(load_config("rft", overrides=[*settings, *resume]))
    (out / "wall_time.json").write_text(json.dumps({"seconds": time.time() - began}))
    return out


def plateau(curve: list[tuple[int, float]], patience: int) -> tuple[int, bool]:
    """(r*, whether the accuracy stopped rising within the run): the first evaluation after round 0 that the next
    ``patience`` evaluations do not beat; the last one if every window still rose."""
    for i, (step, acc) in enumerate(curve):
        later = [a for _, a in curve[i + 1 : i + 1 + patience]]
        if step > 0 and len(later) == patience and max(later) <= acc:
            return step, True
    return curve[-1][0], False


def checkpoint_run(long: Path, rounds: int, folder: Path) -> Path:
    """The long run as it stood after ``rounds`` rounds, as a run folder of its own: its config (``rft.iterations``
    = rounds), its metrics up to that round, and ``final/`` = the checkpoint's weights with the run's tokenizer."""
    import shutil

    import yaml

    from rewardsft.training.metrics import read_metrics

    if (folder / "final").is_dir():
        return folder
    weights = long / "checkpoints" / f"step-{rounds}" / "model"
    if not weights.is_dir():
        raise SystemExit(f"{long} kept no checkpoint of round {rounds}: rerun with --eval-every dividing it")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(weights, tmp / "final")
    for item in (long / "final").iterdir():
        if "token" in item.name or item.name == "chat_template.jinja":
            shutil.copy2(item, tmp / "final" / item.name)
    config = yaml.safe_load((long / "config.yaml").read_text())
    config["rft"]["iterations"], config["output_dir"] = rounds, str(folder)
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    kept = [r for r in read_metrics(long / "metrics.jsonl") if r["step"] <= rounds]
    (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(folder)
    return folder


def accuracy_curve(run: Path) -> list[tuple[int, float]]:
    from rewardsft.training.metrics import read_metrics

    return [(r["step"], r["eval/rm_accuracy"]) for r in read_metrics(run / "metrics.jsonl") if "eval/rm_accuracy" in r]


def evaluate_test_gap(run: Path, study: Path) -> None:
    from rewardsft.eval.logprob_gap import GapSettings, logprob_gap
    from rewardsft.studies.verdict import STUDY_METRICS

    folder = run / "eval" / "test-gap"
    if not (folder / "summary.json").is_file():
        settings = GapSettings(batch_size=16, paired_metrics=STUDY_METRICS)
        logprob_gap(str(run / "final"), str(study / "split" / "test.jsonl"), folder, None, settings)


def compare(runs: dict[str, Path], baselines: dict[str, Path]) -> list[dict[str, Any]]:
    from rewardsft.eval.paired import Group, compare_groups

    rows: list[dict[str, Any]] = []
    for base_name, base in baselines.items():
        groups = [Group(name, [run]) for name, run in runs.items()]
        for row in compare_groups([*groups, Group(base_name, [base])], Group(base_name, [base]), "test-gap"):
            if row["group"] != base_name:
                rows.append({**row, "against": base_name})
    return rows


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "# RFT at a fair budget",
        "",
        f"From the study's tuned SFT model (seed {record['seed']}); policy lr {record['lr']:g}, reward-model lr "
        f"{record['reward_lr']:g}, {record['samples']} samples per prompt, {record['prompts']} prompts per round.",
        "",
        "Held-out reward-model accuracy (demonstration scored above the policy's own sample):",
        "",
        "| round | " + " | ".join(str(s) for s, _ in record["curve"]) + " |",
        "|---|" + "---|" * len(record["curve"]),
        "| accuracy | " + " | ".join(f"{a:.3f}" for _, a in record["curve"]) + " |",
        "",
        f"r* = {record['r_star']} rounds ({'the accuracy stopped rising' if record['stopped'] else 'still rising at the end of the run: r* is a lower bound'}); "
        f"matched budget = {record['matched']} rounds.",
        "",
        "| run | against | Δ gap (nats) | 95% CI | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        if row["metric"] != "gap":
            continue
        lo, hi = row["ci95"]
        lines.append(
            f"| {row['group']} | {row['against']} | {row['mean']:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {row['verdict']} |"
        )
    lines += ["", f"Wall time: {record['minutes']:.1f} min on this machine.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a finished rewardsft study folder of benchmarks.real_study")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=Budget.rounds)
    parser.add_argument("--eval-every", type=int, default=Budget.eval_every)
    parser.add_argument("--lr", type=float, default=Budget.lr)
    parser.add_argument("--reward-lr", type=float, default=Budget.reward_lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="on a study run with real_study --quick")
    args = parser.parse_args()
    budget = Budget(args.rounds, args.eval_every, Budget.patience, args.lr, args.reward_lr, Budget.samples, args.seed)
    study, out, grid = Path(args.study), Path(args.out), QUICK if args.quick else Grid()
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    sft = chosen_run(study, "sft", budget.seed)
    heldout = held_out_demonstrations(study, out)
    # Every run evaluates the same way, so that a run of r rounds is the long run's first r rounds exactly.
    eval_flags = [f"data.eval_path={heldout}", f"train.eval_every={budget.eval_every}"]

    tag = f"lr{budget.lr:g}-rlr{budget.reward_lr:g}-k{budget.samples}-s{budget.seed}"

    long = train([*rft_settings(study, sft, out / f"{tag}-r{budget.rounds}", budget.rounds, budget, grid), *eval_flags])
    curve = accuracy_curve(long)
    r_star, stopped = plateau(curve, budget.patience)
    n_train = len((study / "split" / "train.jsonl").read_text().splitlines()[: grid.demonstrations])
    matched = int(rft_overrides(n_train, grid.batch_size, 1)[0].split("=")[1])  # the study's own count

    def after(rounds: int) -> Path:
        return long if rounds == budget.rounds else checkpoint_run(long, rounds, out / f"{tag}-r{rounds}-of-long")

    runs = {f"rft {matched} rounds (matched)": after(matched), f"rft {r_star} rounds (fair)": after(r_star)}
    for run in runs.values():
        evaluate_test_gap(run, study)
    baselines = {
        "tuned SFT": sft,
        "SFT continued (control)": chosen_run(study, "sft-continued", budget.seed),
        "SFT -> SPIN": chosen_run(study, "spin-from-sft", budget.seed),
    }
    record = {
        **vars(budget),
        "prompts": grid.batch_size,
        "curve": curve,
        "r_star": r_star,
        "stopped": stopped,
        "matched": matched,
        "rows": compare(runs, baselines),
        "minutes": (time.time() - began) / 60,
    }
    (out / "rft_budget.json").write_text(json.dumps(record, indent=2))
    (out / "rft_budget.md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
