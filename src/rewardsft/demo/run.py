"""``rewardsft demo``: the whole pipeline offline on a tiny model and the built-in Q&A task, in about a minute.

1. a tiny random Llama and a tokenizer trained in-process; the task split into training and held-out rows;
2. SFT on the demonstrations, then, each starting from the SFT model: SPIN (IRFT, T=1), IRFT (T=3) and RFT;
3. evaluation of every model: the log-prob gap between the right answer and the same words scrambled on
   held-out prompts, and the win rate against the SFT model under a programmatic judge that knows the answer;
4. a comparison report (Markdown, HTML, PNG plots) and model cards.

At this scale the numbers show the mechanics, not the paper's effect sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rewardsft.config import GenerationConfig, load_config
from rewardsft.data.builtin import builtin_rows
from rewardsft.errors import ConfigError
from rewardsft.eval.logprob_gap import logprob_gap
from rewardsft.eval.paired import compare_runs
from rewardsft.eval.report import build_report
from rewardsft.eval.win_rate import WinRateSettings, win_rate
from rewardsft.layout import EVAL, FINAL
from rewardsft.recipes.irft import train_irft
from rewardsft.recipes.rft import train_rft
from rewardsft.recipes.sft import train_sft
from rewardsft.tiny import write_tiny_model

COMMON = [
    "data.max_length=64",
    "data.max_prompt_length=32",
    "train.batch_size=8",
    "train.save_every=1000",
    "logging.progress=false",
    "train.log_every=25",
    "optim.warmup_ratio=0.1",
]


def answer_overlap(prompt: Any, response: str) -> float:
    """Judge: F1 overlap between the response's words and the known answer to the prompt (0 when unknown)."""
    answers = _answers()
    question = prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
    reference = answers.get(question.strip())
    if reference is None:
        return 0.0
    got, want = _words(response), _words(reference)
    common = sum(min(got.count(w), want.count(w)) for w in set(want))
    if not got or not common:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> list[str]:
    return [w.strip(".,!?").lower() for w in text.split() if w.strip(".,!?")]


def _answers() -> dict[str, str]:
    return {r["messages"][0]["content"]: r["messages"][1]["content"] for r in builtin_rows()}  # type: ignore[index]


def write_task(folder: Path) -> tuple[Path, Path, Path]:
    """Training rows (3/4), held-out rows (1/4) and held-out preference pairs (answer vs scrambled answer)."""
    rows = builtin_rows()
    train, held_out = [r for i, r in enumerate(rows) if i % 4], [r for i, r in enumerate(rows) if not i % 4]
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [
        {
            "prompt": [r["messages"][0]],
            "chosen": [r["messages"][1]],  # type: ignore[index]
            "rejected": [{"role": "assistant", "content": " ".join(reversed(r["messages"][1]["content"].split()))}],
        }
        for r in held_out
    ]  # type: ignore[index]
    paths = []
    for name, data in (("train", train), ("held_out", held_out), ("held_out_pairs", pairs)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in data))
        paths.append(path)
    return paths[0], paths[1], paths[2]


def run_demo(output_dir: Path, overwrite: bool = False) -> Path:
    """Train, evaluate and report; returns the report's Markdown file."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # transformers' per-save bars would drown the demo's own lines
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{output_dir} is not empty; pass --overwrite to replace it")
        shutil.rmtree(output_dir)
    base = write_tiny_model(output_dir / "tiny-model", arch="llama", hidden_size=64, layers=2)
    train, held_out, pairs = write_task(output_dir / "data")
    runs = output_dir / "runs"
    data = [f"data.path={train}", f"data.eval_path={held_out}", *COMMON]

    print("[1/4] SFT on the demonstrations")
    sft = train_sft(
        load_config(
            "sft",
            overrides=[
                f"model.name_or_path={base}",
                f"output_dir={runs / 'sft'}",
                "train.epochs=25",
                "optim.lr=3e-3",
                *data,
            ],
        )
    )
    print("[2/4] SPIN (IRFT T=1), IRFT (T=3) and RFT, each from the SFT model")
    start = [f"model.name_or_path={sft}", *data]
    irft = [
        "optim.name=adamw",
        "optim.lr=3e-4",
        "train.epochs=2",
        "irft.sft_weight=0.5",
        "generation.max_new_tokens=16",
        "generation.batch_size=36",
    ]
    train_irft(load_config("irft", overrides=[*start, f"output_dir={runs / 'spin'}", "irft.stages=1", *irft]))
    train_irft(load_config("irft", overrides=[*start, f"output_dir={runs / 'irft'}", "irft.stages=3", *irft]))
    train_rft(
        load_config(
            "rft",
            overrides=[
                *start,
                f"output_dir={runs / 'rft'}",
                "rft.iterations=8",
                "train.log_every=1",  # RFT logs per round
                "rft.prompts_per_iteration=12",
                "rft.samples_per_prompt=4",
                "optim.lr=3e-4",
                "reward_model.lr=1e-3",
                "generation.max_new_tokens=16",
            ],
        )
    )

    print("[3/4] evaluation: log-prob gap on held-out pairs, win rate against SFT")
    evaluate_runs(runs, sft, pairs, held_out)

    run_dirs = [runs / n for n in ("sft", "spin", "irft", "rft")]
    print_differences(compare_runs(run_dirs[1:], runs / "sft"))
    print("[4/4] report")
    report = build_report(run_dirs, output_dir / "report", baseline=runs / "sft")
    print(f"demo done: {report} (and report.html beside it)")
    return report


def evaluate_runs(runs: Path, sft: Path, pairs: Path, held_out: Path) -> None:
    """Gap (against the SFT model as reference) and greedy win rate against SFT, for every run."""
    greedy = GenerationConfig(max_new_tokens=16, do_sample=False)
    judge = "rewardsft.demo.run:answer_overlap"
    for name in ("sft", "spin", "irft", "rft"):
        model = runs / name / FINAL
        gap = logprob_gap(
            str(model),
            str(pairs),
            runs / name / EVAL / "gap",
            ref_model=str(sft),
        )
        wins = win_rate(
            str(model), str(sft), str(held_out), judge, runs / name / EVAL / "winrate", greedy, WinRateSettings()
        )
        print(
            f"  {name:5s} gap {gap['gap']['mean']:7.3f}  accuracy {gap['accuracy']['mean']:.2f}  "
            f"win rate vs SFT {wins['win_rate_ties_half']['mean']:.2f} "
            f"(W/T/L {wins['wins']}/{wins['ties']}/{wins['losses']})"
        )


def print_differences(rows: list[dict[str, Any]]) -> None:
    """The claims the demo makes: each method against SFT on the same pairs and prompts (paired intervals)."""
    print("  against SFT, paired on the same held-out pairs / prompts (95% bootstrap CI):")
    for row in rows:
        if row["metric"] in ("gap", "win_rate"):
            label = "gap difference" if row["metric"] == "gap" else "win rate - 0.5"
            lo, hi = row["ci95"]
            print(f"  {row['group']:5s} {label:15s} {row['mean']:+7.3f} [{lo:+.3f}, {hi:+.3f}]  {row['verdict']}")
