"""Command line: subcommands map to library functions; no training logic lives here.

Exit codes: 0 success, 2 bad config or bad data (one clear message, no traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rewardsft import api
from rewardsft.config import METHODS, load_config
from rewardsft.data.tokenize import MAX_LENGTH, MAX_PROMPT_LENGTH
from rewardsft.errors import ConfigError, NonFiniteError
from rewardsft.training.signals import Preempted

DESCRIPTION = (
    "Fine-tune language models from demonstrations with reward learning: SFT, IRFT/SPIN, RFT (arXiv 2405.17888)."
)


def _train(args: argparse.Namespace) -> int:
    result = api.train(args.method, args.config, args.overrides)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(f"done: {result.final_dir}")
    return 0


def api_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of a Python API function: the CLI's flags take theirs from it (one place each)."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def defaults_from(parser: argparse.ArgumentParser, function: Callable[..., Any], *names: str) -> None:
    """Give the flags ``names`` (their ``dest``) the defaults of ``function``'s keywords of the same names."""
    defaults = api_defaults(function)
    parser.set_defaults(**{name: defaults[name] for name in names})


ENV_PACKAGES = ("torch", "transformers", "accelerate", "peft", "datasets", "safetensors", "huggingface_hub", "lm_eval")


def environment() -> dict[str, str]:
    """Versions and the device, for bug reports (``rewardsft env``)."""
    import platform
    from importlib import metadata

    import torch

    from rewardsft._version import __version__

    info = {"rewardsft": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ENV_PACKAGES:
        try:
            info[package] = metadata.version(package.replace("_", "-"))
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        info["device"] = f"cuda x{torch.cuda.device_count()} ({names}), CUDA {torch.version.cuda}"
    else:
        info["device"] = f"cpu ({torch.get_num_threads()} threads)"
    return info


def _env(args: argparse.Namespace) -> int:
    for key, value in environment().items():
        print(f"{key}: {value}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from rewardsft.config import to_commented_yaml

    print(to_commented_yaml(load_config(args.method, args.config, args.overrides)), end="")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from rewardsft.tiny import write_tiny_model

    corpus = None
    if args.corpus:
        path = Path(args.corpus)
        if not path.is_file():
            raise ConfigError(f"corpus file {path} does not exist")
        try:
            corpus = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ConfigError(f"corpus file {path} is not valid UTF-8") from None
        if not corpus:
            raise ConfigError(f"corpus file {path} is empty")
    out = write_tiny_model(
        args.out_dir,
        args.arch,
        corpus,
        hidden_size=args.hidden_size,
        layers=args.layers,
        seed=args.seed,
        chat_template=not args.no_chat_template,
    )
    print(f"wrote a tiny {args.arch} model and tokenizer to {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.which == "toy":
        from rewardsft.demo.toy import run_toy

        run_toy()
        return 0
    from rewardsft.demo.run import demo_settings, run_demo

    if args.seeds is not None and args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if args.noise is not None and any(not 0 <= p < 1 for p in args.noise):
        raise ConfigError("--noise values must be in [0, 1)")
    settings = demo_settings(args.quick, args.seeds, args.noise, args.seed, args.model)
    run_demo(Path(args.output_dir), overwrite=args.overwrite, settings=settings)
    return 0


def _score(args: argparse.Namespace) -> int:
    from rewardsft.scoring import score_file

    out = Path(args.out) if args.out else None
    records = score_file(
        args.reward_model, args.data, out, args.format, args.split, args.batch_size, render=_render_flags(args)
    )
    if args.out:
        print(f"scored {len(records)} rows -> {args.out}")
    return 0


def _best_of_n(args: argparse.Namespace) -> int:
    from rewardsft.config import GenerationConfig
    from rewardsft.scoring import best_of_n

    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    out = Path(args.out) if args.out else None
    records = best_of_n(
        args.model, args.reward_model, args.prompts, args.n, out, gen, seed=args.seed, render=_render_flags(args)
    )
    if args.out:
        print(f"best of {args.n} for {len(records)} prompts -> {args.out}")
    return 0


def _eval_gap(args: argparse.Namespace) -> int:
    summary = api.evaluate_gap(
        args.model,
        args.data,
        out=args.out or None,
        ref_model=args.ref_model,
        beta=args.beta,
        batch_size=args.batch_size,
        max_rows=args.max_rows,
        split=args.split,
        **_render_flags(args),
    )
    gap, acc = summary["gap"], summary["accuracy"]
    print(
        f"{summary['pairs']} pairs: gap {gap['mean']:.4f} (95% CI {gap['ci95'][0]:.4f}..{gap['ci95'][1]:.4f}), "
        f"accuracy {acc['mean']:.3f}" + (f" -> {args.out}" if args.out else "")
    )
    return 0


def _eval_winrate(args: argparse.Namespace) -> int:
    summary = api.win_rate(
        args.model,
        args.baseline,
        args.prompts,
        args.judge,
        out=args.out or None,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        tie_margin=args.tie_margin,
        split=args.split,
        **_render_flags(args),
    )
    w = summary["win_rate_ties_half"]
    print(
        f"{summary['n']} prompts: W/T/L {summary['wins']}/{summary['ties']}/{summary['losses']}, win rate "
        f"{w['mean']:.3f} (95% CI {w['ci95'][0]:.3f}..{w['ci95'][1]:.3f})" + (f" -> {args.out}" if args.out else "")
    )
    return 0


def _eval_human_likeness(args: argparse.Namespace) -> int:
    summary = api.human_likeness(
        args.model,
        args.prompts,
        args.references,
        out=args.out or None,
        encoder=args.encoder,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        mauve_seeds=args.mauve_seeds,
        split=args.split,
        **_render_flags(args),
    )
    m, acc, top = summary["mauve"], summary["discriminator_accuracy"], summary["ceiling"]
    ceiling = (
        f"; two halves of the references: MAUVE {top['mauve']['mean']:.3f}, accuracy {top['accuracy']['mean']:.3f}"
        if "mauve" in top
        else ""
    )
    print(
        f"{summary['n_samples']} samples vs {summary['n_references']} references: MAUVE {m['mean']:.3f} "
        f"(seeds {m['seed_range'][0]:.3f}..{m['seed_range'][1]:.3f}), discriminator accuracy {acc['mean']:.3f} "
        f"[{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] (0.5: indistinguishable){ceiling}"
        + (f" -> {args.out}" if args.out else "")
    )
    return 0


def _eval_compare(args: argparse.Namespace) -> int:
    from rewardsft.eval.paired import differences_markdown, write_comparison

    rows = api.compare(args.runs, args.baseline, args.eval)
    print(differences_markdown(rows, Path(args.baseline).name), end="")
    if args.out:
        write_comparison(rows, Path(args.baseline).name, Path(args.out))
        print(f"-> {args.out}/compare.json, compare.md")
    return 0


def _eval_harness(args: argparse.Namespace) -> int:
    from rewardsft.eval.harness import run_harness

    summary = run_harness(
        args.model, args.tasks, Path(args.out) if args.out else None, args.limit, args.batch_size, args.include_path
    )
    for name, score in summary["tasks"].items():
        print(f"{name}: {score['metric']} = {score['value']:.4f}")
    print(f"average: {summary['average']:.4f} (lm-eval {summary['lm_eval_version']})")
    return 0


def _report(args: argparse.Namespace) -> int:
    print(f"report: {api.report(args.runs, args.out, args.baseline or None)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rewardsft._version import __version__

    parser = argparse.ArgumentParser(prog="rewardsft", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"rewardsft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train_p = sub.add_parser("train", help="train a model: sft, irft (Algorithm 2) or rft (Algorithm 1)")
    _method_args(train_p)
    train_p.set_defaults(func=_train)

    config_p = sub.add_parser("config", help="inspect configurations")
    config_sub = config_p.add_subparsers(dest="config_command", required=True)
    show_p = config_sub.add_parser("show", help="print the fully resolved config as YAML")
    _method_args(show_p)
    show_p.set_defaults(func=_config_show)

    tiny_p = sub.add_parser("tiny-model", help="write a tiny random causal LM + tokenizer (no hub needed)")
    tiny_p.add_argument("out_dir")
    tiny_p.add_argument("--arch", choices=["llama", "gpt_neox"], default="llama")
    tiny_p.add_argument("--corpus", help="text file (one line per sample) to train the tokenizer on")
    tiny_p.add_argument("--hidden-size", type=int, default=64)
    tiny_p.add_argument("--layers", type=int, default=2)
    tiny_p.add_argument("--seed", type=int, default=0)
    tiny_p.add_argument("--no-chat-template", action="store_true", help="leave the tokenizer without a template")
    tiny_p.set_defaults(func=_tiny_model)

    env_p = sub.add_parser("env", help="print the versions of Python, torch, transformers, ... and the device")
    env_p.set_defaults(func=_env)

    _add_reward_model_commands(sub)
    _add_eval_commands(sub)
    report_p = sub.add_parser("report", help="compare runs: Markdown + self-contained HTML + PNG plots")
    report_p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    report_p.add_argument("--out", required=True)
    report_p.add_argument(
        "--baseline", metavar="RUN_DIR", help="add paired differences of every run (seeds combined) against this run"
    )
    report_p.set_defaults(func=_report)

    _add_study_command(sub)
    _add_audit_command(sub)
    demo_p = sub.add_parser(
        "demo", help="offline: SFT, SPIN, IRFT and RFT on a built-in task with a true reward (or `demo toy`)"
    )
    demo_p.add_argument("which", nargs="?", choices=["task", "toy"], default="task", help="toy: the one-state example")
    demo_p.add_argument("--output-dir", default="runs/demo")
    demo_p.add_argument("--overwrite", action="store_true")
    demo_p.add_argument("--quick", action="store_true", help="smaller task, 2 seeds, 2 noise levels (CI)")
    demo_p.add_argument("--seeds", type=int, help="seeds per method (default 3; --quick 2)")
    demo_p.add_argument("--noise", type=float, nargs="+", help="shares of habitual demonstrations to sweep")
    demo_p.add_argument("--seed", type=int, default=0, help="seed of the task data and the base model")
    demo_p.add_argument("--model", help="a local HF model folder as the base (e.g. SmolLM2-135M-Instruct)")
    demo_p.set_defaults(func=_demo)
    return parser


def _study(args: argparse.Namespace) -> int:
    api.study(
        args.model,
        args.data,
        args.out,
        pairs=args.pairs,
        methods=_listed(args.methods, str),
        seeds=args.seeds,
        lrs=_listed(args.lrs, float),
        passes=_listed(args.passes, int) or (1,),
        budget=args.budget,
        judge=args.judge,
        encoder=args.human_likeness,
        overrides=args.overrides,
        config=args.config,
        quick=args.quick,
        overwrite=args.overwrite,
        keep_tries=args.keep_tries,
        split=args.split,
        format=args.format,
        dev_share=args.dev_share,
        holdout=args.holdout,
    )
    return 0


def _listed(text: str | None, kind: type) -> list[Any] | None:
    """``"1e-6,1e-5"`` -> [1e-06, 1e-05]; a value that does not parse is an error naming it."""
    if text is None:
        return None
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{text!r} is not a comma-separated list of {kind.__name__} values") from None


def _add_study_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "study",
        help="does reward learning beat tuned SFT on your data? tuned, budget-matched, dev/test split, verdict",
        description="Tune every method on a dev part of the held-out data (the same tries each), train the chosen "
        "settings over seeds, add a budget-matched SFT control for each *-from-sft method, and give paired verdicts "
        "on a test part. Rerun to continue. KEY=VALUE settings reach every run whose recipe reads them "
        "(docs/study.md).",
    )
    p.add_argument("--model", required=True, help="the base model: a local folder or hub id")
    p.add_argument("--data", required=True, help="the demonstrations, in any format `rewardsft train` reads")
    p.add_argument("--pairs", help="held-out preference pairs (chosen/rejected), split into dev and test")
    p.add_argument("--out", required=True, help="the study folder (rerun with the same one to continue)")
    p.add_argument(
        "--methods",
        help="comma-separated: spin, irft-tN, rft, and X-from-sft for each (the paper's protocol); SFT is always in "
        "[spin,irft-t4,spin-from-sft; --quick spin,spin-from-sft]",
    )
    p.add_argument("--seeds", type=int, help="seeds of every method's chosen setting [3; --quick 1]")
    p.add_argument("--lrs", help="learning rates tried per method on dev [1e-6,1e-5,1e-4; --quick 1e-4,1e-3]")
    p.add_argument("--passes", help="pass counts tried per method from the base, e.g. 1,2 [1]")
    p.add_argument("--budget", type=int, help="further passes of the from-SFT runs and controls [%(default)s]")
    p.add_argument("--judge", help="win rates against tuned SFT's samples: reward-model dir or module:function")
    p.add_argument(
        "--human-likeness",
        metavar="ENCODER",
        help="add MAUVE and a discriminator against the test part's human responses: minilm or a model folder",
    )
    p.add_argument("--config", help="YAML settings for every run that reads them")
    p.add_argument("--quick", action="store_true", help="a smoke test: 16 demonstrations, tiny generations, 1 seed")
    p.add_argument("--overwrite", action="store_true", help="empty --out first")
    p.add_argument(
        "--keep-tries", action="store_true", help="keep the weights of the dev tries not chosen [removed; evals stay]"
    )
    p.add_argument("--split", help="split of --data and --pairs (hub datasets, folders) [%(default)s]")
    p.add_argument("--format", help="row format of --data [%(default)s]")
    p.add_argument("--dev-share", type=float, help="share of the held-out rows used for tuning [%(default)s]")
    p.add_argument("--holdout", type=float, help="without --pairs: demonstrations held out [%(default)s]")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.max_length=256 optim.schedule=constant")
    defaults_from(p, api.study, "budget", "split", "format", "dev_share", "holdout")
    p.set_defaults(func=_study)


def _add_audit_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "audit",
        help="find the probably-bad demonstrations with the reward learned from the others (out of fold)",
        description="Score every demonstration out of fold: learn a reward on k-1 folds (SPIN's implicit reward, "
        "or RFT's reward model), score the held-out fold's rows by it; write scores.jsonl, flagged.jsonl, "
        "clean.jsonl, rejected.jsonl and a report. Rerun to continue (docs/audit.md).",
    )
    p.add_argument("--model", required=True, help="the start model: a local folder, hub id or run folder")
    p.add_argument("--data", required=True, help="the demonstrations, in any format `rewardsft train` reads")
    p.add_argument("--out", required=True, help="the audit folder (rerun with the same one to continue)")
    p.add_argument(
        "--reward",
        choices=["implicit", "explicit"],
        help="implicit: SPIN's; explicit: RFT's reward model [%(default)s]",
    )
    p.add_argument("--folds", type=int, help="[%(default)s]")
    p.add_argument("--flag-share", type=float, help="flag this share of the rows, lowest first [0.1]")
    p.add_argument("--flag-below", type=float, help="flag rows whose score (z within fold) is below this")
    p.add_argument("--passes", type=int, help="passes over the other folds for each fold's reward [%(default)s]")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--against-samples",
        type=int,
        metavar="N",
        help="score a row against the mean reward of N start-model samples for its prompt [%(default)s: none]",
    )
    p.add_argument("--keep-models", action="store_true", help="keep each fold's trained reward [removed]")
    p.add_argument("--overwrite", action="store_true", help="empty --out first")
    p.add_argument("--split", help="split of --data (hub datasets, folders) [%(default)s]")
    p.add_argument("--format", help="row format of --data [%(default)s]")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="settings of every fold's run, e.g. reward_model.lr=1e-4"
    )
    defaults_from(p, api.audit, "reward", "folds", "passes", "seed", "against_samples", "split", "format")
    p.set_defaults(func=_audit)


def _audit(args: argparse.Namespace) -> int:
    api.audit(
        args.model,
        args.data,
        args.out,
        reward=args.reward,
        folds=args.folds,
        flag_share=args.flag_share,
        flag_below=args.flag_below,
        passes=args.passes,
        seed=args.seed,
        overrides=args.overrides,
        against_samples=args.against_samples,
        keep_models=args.keep_models,
        overwrite=args.overwrite,
        split=args.split,
        format=args.format,
    )
    return 0


def _add_reward_model_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    score_p = sub.add_parser("score", help="score (prompt, response) rows with a reward model")
    score_p.add_argument("--reward-model", required=True, help="dir or hub id of a sequence-classification model")
    score_p.add_argument("--data", required=True, help="rows in any supported format (rejected sides scored too)")
    score_p.add_argument("--out", help="JSONL output (default: stdout)")
    score_p.add_argument("--format", default="auto")
    score_p.add_argument("--split", default="train")
    score_p.add_argument("--batch-size", type=int, default=16)
    _render_args(score_p)
    score_p.set_defaults(func=_score)

    bon_p = sub.add_parser("best-of-n", help="sample N responses per prompt and keep the reward model's favourite")
    bon_p.add_argument("--model", required=True)
    bon_p.add_argument("--reward-model", required=True)
    bon_p.add_argument("--prompts", required=True, help="rows with a prompt (text or messages), or conversations")
    bon_p.add_argument("--n", type=int, default=4)
    bon_p.add_argument("--out", help="JSONL output (default: stdout)")
    bon_p.add_argument("--max-new-tokens", type=int, default=256)
    bon_p.add_argument("--temperature", type=float, default=1.0)
    bon_p.add_argument("--top-p", type=float, default=1.0)
    bon_p.add_argument("--seed", type=int, default=0)
    _render_args(bon_p)
    bon_p.set_defaults(func=_best_of_n)


def _add_eval_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    eval_p = sub.add_parser("eval", help="evaluate models: log-prob gap, win rate, human-likeness, lm-eval-harness")
    eval_sub = eval_p.add_subparsers(dest="eval_command", required=True)
    gap_p = eval_sub.add_parser("gap", help="log p(chosen) - log p(rejected) on preference pairs")
    gap_p.add_argument("--model", required=True)
    gap_p.add_argument("--ref-model", help="adds the implicit-reward margin beta*(log-ratio differences)")
    gap_p.add_argument("--data", required=True, help="chosen/rejected rows (HH-RLHF, ultrafeedback, ...)")
    gap_p.add_argument("--split")
    gap_p.add_argument("--out", help="directory for summary.json and per_example.csv")
    gap_p.add_argument("--beta", type=float, help="[%(default)s]")
    gap_p.add_argument("--batch-size", type=int, help="[%(default)s]")
    gap_p.add_argument("--max-rows", type=int)
    _render_args(gap_p)
    defaults_from(gap_p, api.evaluate_gap, "split", "beta", "batch_size")
    gap_p.set_defaults(func=_eval_gap)
    win_p = eval_sub.add_parser("winrate", help="judge a model's answers against a baseline's")
    win_p.add_argument("--model", required=True)
    win_p.add_argument("--baseline", required=True)
    win_p.add_argument("--prompts", required=True)
    win_p.add_argument("--judge", required=True, help="reward-model dir / hub id, or module:function")
    win_p.add_argument("--n", type=int, help="first N prompts (default all)")
    win_p.add_argument("--out", help="directory for summary.json and generations.jsonl")
    win_p.add_argument("--split")
    win_p.add_argument("--max-new-tokens", type=int, help="[%(default)s]")
    win_p.add_argument("--temperature", type=float, help="0 decodes greedily [%(default)s]")
    win_p.add_argument("--tie-margin", type=float, help="[%(default)s]")
    win_p.add_argument("--seed", type=int)
    _render_args(win_p)
    defaults_from(win_p, api.win_rate, "split", "max_new_tokens", "temperature", "tie_margin", "seed")
    win_p.set_defaults(func=_eval_winrate)
    like_p = eval_sub.add_parser(
        "human-likeness", help="how human the samples read: MAUVE and a discriminator against held-out demonstrations"
    )
    like_p.add_argument("--model", required=True)
    like_p.add_argument("--prompts", required=True, help="rows with a prompt; one sample per row")
    like_p.add_argument("--references", required=True, help="held-out human demonstrations (or pairs: chosen side)")
    like_p.add_argument("--out", help="directory for summary.json and per_example.csv")
    like_p.add_argument("--encoder", help="sentence encoder: minilm (the wheel) or a folder/hub id [%(default)s]")
    like_p.add_argument("--n", type=int, help="first N prompts (default all)")
    like_p.add_argument("--split")
    like_p.add_argument("--max-new-tokens", type=int, help="[%(default)s]")
    like_p.add_argument("--temperature", type=float, help="0 decodes greedily [%(default)s]")
    like_p.add_argument("--seed", type=int)
    like_p.add_argument("--mauve-seeds", type=int, help="k-means seeds of MAUVE's quantisation [%(default)s]")
    _render_args(like_p)
    defaults_from(
        like_p, api.human_likeness, "encoder", "split", "max_new_tokens", "temperature", "seed", "mauve_seeds"
    )
    like_p.set_defaults(func=_eval_human_likeness)
    compare_p = eval_sub.add_parser(
        "compare", help="paired differences of several runs against a baseline run on the same pairs / prompts"
    )
    compare_p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="runs (seeds of one method are grouped)")
    compare_p.add_argument("--baseline", required=True, metavar="RUN_DIR", help="e.g. the SFT run")
    compare_p.add_argument(
        "--eval", action="append", metavar="NAME", help="evaluation folder under RUN/eval/ (default: all shared)"
    )
    compare_p.add_argument("--out", help="directory for compare.json and compare.md")
    compare_p.set_defaults(func=_eval_compare)
    harness_p = eval_sub.add_parser("harness", help="lm-evaluation-harness tasks (pip install 'rewardsft[eval]')")
    harness_p.add_argument("--model", required=True)
    harness_p.add_argument("--tasks", required=True, help="T1,T2 or open_llm_v1")
    harness_p.add_argument("--limit", type=int)
    harness_p.add_argument("--batch-size", type=int, default=8)
    harness_p.add_argument("--include-path", help="folder of extra task YAML files")
    harness_p.add_argument("--out")
    harness_p.set_defaults(func=_eval_harness)


RENDER_FLAGS = ("system_prompt", "fallback_template", "text_prompts", "max_length", "max_prompt_length")


def _render_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "prompt rendering",
        "A run's model (its folder, final/ or reward_model/) renders prompts exactly as the run trained, from its "
        "config.yaml, and refuses these flags; they apply to any other model (defaults in brackets).",
    )
    group.add_argument("--system-prompt", help="system turn added to message prompts [none]")
    group.add_argument("--fallback-template", help="chat template for tokenizers without one [default]")
    group.add_argument("--text-prompts", choices=["verbatim", "user_turn"], help="plain-text prompts [verbatim]")
    group.add_argument("--max-length", type=int, help=f"prompt + response tokens [{MAX_LENGTH}]")
    group.add_argument("--max-prompt-length", type=int, help=f"prompt tokens kept from the end [{MAX_PROMPT_LENGTH}]")


def _render_flags(args: argparse.Namespace) -> dict[str, object]:
    return {name: getattr(args, name) for name in RENDER_FLAGS}


def _method_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("--config", help="YAML file of settings")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=1e-6")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after --config; argparse leaves the later ones over, so collect them.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"rewardsft: {stop}", file=sys.stderr)
        return stop.exit_code
    except NonFiniteError as err:
        print(f"error: training stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun with resume=true to continue from the last checkpoint", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
