"""Command line: subcommands map to library functions; no training logic lives here.

Exit codes: 0 success, 2 bad config or bad data (one clear message, no traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from rewardsft.config import METHODS, ConfigError, RunConfig, load_config


def _train(args: argparse.Namespace) -> int:
    config = load_config(args.method, args.config, args.overrides)
    final = train(config)
    print(f"done: {final}")
    return 0


def train(config: RunConfig) -> Path:
    """Run the recipe named by ``config.method``."""
    recipes: dict[str, Callable[[RunConfig], Path]] = {"sft": _sft, "irft": _irft, "rft": _rft}
    if config.method not in recipes:
        raise NotImplementedError(f"rewardsft train {config.method} is not implemented yet")
    return recipes[config.method](config)


def _sft(config: RunConfig) -> Path:
    from rewardsft.recipes.sft import train_sft

    return train_sft(config)


def _irft(config: RunConfig) -> Path:
    from rewardsft.recipes.irft import train_irft

    return train_irft(config)


def _rft(config: RunConfig) -> Path:
    from rewardsft.recipes.rft import train_rft

    return train_rft(config)


def _config_show(args: argparse.Namespace) -> int:
    print(load_config(args.method, args.config, args.overrides).to_yaml(), end="")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from rewardsft.tiny import write_tiny_model

    corpus = None
    if args.corpus:
        path = Path(args.corpus)
        if not path.is_file():
            raise ConfigError(f"corpus file {path} does not exist")
        corpus = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
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
    from rewardsft.demo.run import run_demo

    run_demo(Path(args.output_dir), overwrite=args.overwrite)
    return 0


def _score(args: argparse.Namespace) -> int:
    from rewardsft.scoring import score_file

    records = score_file(
        args.reward_model, args.data, Path(args.out) if args.out else None, args.format, args.split, args.batch_size
    )
    if args.out:
        print(f"scored {len(records)} rows -> {args.out}")
    return 0


def _best_of_n(args: argparse.Namespace) -> int:
    from rewardsft.config import GenerationConfig
    from rewardsft.scoring import best_of_n

    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    records = best_of_n(
        args.model, args.reward_model, args.prompts, args.n, Path(args.out) if args.out else None, gen, seed=args.seed
    )
    if args.out:
        print(f"best of {args.n} for {len(records)} prompts -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardsft", description=__doc__.splitlines()[0] if __doc__ else None)
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

    score_p = sub.add_parser("score", help="score (prompt, response) rows with a reward model")
    score_p.add_argument("--reward-model", required=True, help="dir or hub id of a sequence-classification model")
    score_p.add_argument("--data", required=True, help="rows in any supported format (rejected sides scored too)")
    score_p.add_argument("--out", help="JSONL output (default: stdout)")
    score_p.add_argument("--format", default="auto")
    score_p.add_argument("--split", default="train")
    score_p.add_argument("--batch-size", type=int, default=16)
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
    bon_p.set_defaults(func=_best_of_n)

    demo_p = sub.add_parser("demo", help="an offline end-to-end run on a built-in task")
    demo_p.add_argument("--output-dir", default="runs/demo")
    demo_p.add_argument("--overwrite", action="store_true")
    demo_p.set_defaults(func=_demo)
    return parser


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
    except KeyboardInterrupt:
        print("interrupted; rerun with resume=true to continue from the last checkpoint", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
