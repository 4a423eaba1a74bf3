"""Evaluation renders prompts exactly as the run trained; text prompts for chat models are flagged or wrapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rewardsft.cli import main
from rewardsft.config import load_config
from rewardsft.data import Example, Renderer, load_split
from rewardsft.layout import render_settings, rendering_for
from rewardsft.models import load_tokenizer
from tests.conftest import write_jsonl
from tests.integration.test_sft import sft_args

SYSTEM = "Be brief and kind."
ROWS = [
    {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
    for q, a in [("What is the capital of Peru?", "Lima."), ("What is one plus two?", "Three."), ("Hi", "Hello!")]
]
PAIRS = [
    {
        "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": good}],
        "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": bad}],
    }
    for q, good, bad in [("What is the capital of Peru?", "Lima.", "Rome."), ("Hi", "Hello!", "Bye.")]
]


@pytest.fixture(scope="module")
def system_run(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    folder = tmp_path_factory.mktemp("system-run")
    data = write_jsonl(folder / "train.jsonl", ROWS)
    out = folder / "run"
    extra = [f"data.system_prompt={SYSTEM}", "train.max_steps=1", "data.max_length=48", "data.max_prompt_length=40"]
    args = sft_args(llama_dir, data, out, *extra)
    assert main(args) == 0
    return out, data, args[2:]


def training_prompt_ids(run_args: list[str], data: Path) -> list[list[int]]:
    """The prompt ids the run trained on, rebuilt from its config the way `train` builds them."""
    config = load_config("sft", overrides=run_args)
    renderer = Renderer.from_settings(load_tokenizer(config.model), render_settings(config.data))
    split = load_split(str(data), "train", renderer, max_length=48, max_prompt_length=40)
    return [ex.prompt_ids for ex in split.tokenized]


def test_gap_evaluation_of_a_run_uses_the_training_prompt_ids(
    system_run: tuple[Path, Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rewardsft.eval import logprob_gap

    out, data, run_args = system_run
    seen: list[Any] = []
    original = logprob_gap.pair_logp_table
    monkeypatch.setattr(
        logprob_gap, "pair_logp_table", lambda m, c, r, b, p: seen.append(list(c)) or original(m, c, r, b, p)
    )
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    logprob_gap.logprob_gap(str(out / "final"), str(pairs))
    trained = training_prompt_ids(run_args, data)
    evaluated = [ex.prompt_ids for ex in seen[0][: len(PAIRS)]]
    assert evaluated == [trained[0], trained[2]]  # byte-identical: same system turn, template and truncation
    tokenizer = load_tokenizer(load_config("sft", overrides=run_args).model)
    assert SYSTEM in tokenizer.decode(evaluated[0])


def test_sampling_and_scoring_render_as_the_run_trained(
    system_run: tuple[Path, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rewardsft import generation

    out, data, run_args = system_run
    seen: list[Any] = []
    original = generation.generate
    monkeypatch.setattr(generation, "generate", lambda m, p, *a, **k: seen.append(list(p)) or original(m, p, *a, **k))
    rendering = rendering_for(str(out))
    generation.sample_texts(rendering, [ROWS[0]["prompt"]], generation.GenerationConfig(max_new_tokens=2), seed=0)
    assert seen[0] == [training_prompt_ids(run_args, data)[0]]


def test_a_plain_baseline_renders_like_the_run_it_is_compared_with_unless_flags_say_otherwise(
    system_run: tuple[Path, Path, list[str]], llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rewardsft import generation
    from rewardsft.eval.win_rate import win_rate

    out, data, run_args = system_run
    seen: list[Any] = []
    original = generation.generate
    monkeypatch.setattr(generation, "generate", lambda m, p, *a, **k: seen.append(list(p)) or original(m, p, *a, **k))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": ROWS[0]["prompt"]}])
    greedy = generation.GenerationConfig(max_new_tokens=2, do_sample=False)
    win_rate(str(out / "final"), str(llama_dir), str(prompts), "tests.judge_fns:length", generation=greedy)
    trained = training_prompt_ids(run_args, data)[0]
    assert seen == [[trained], [trained]]  # the base model saw the run's system prompt and template
    seen.clear()
    win_rate(
        str(out / "final"),
        str(llama_dir),
        str(prompts),
        "tests.judge_fns:length",
        generation=greedy,
        render={"system_prompt": "Other."},
    )
    assert seen[0] == [trained] and seen[1] != [trained]  # flags reach the plain model only
    tokenizer = load_tokenizer(load_config("sft", overrides=run_args).model)
    assert "Other." in tokenizer.decode(seen[1][0])


def test_rendering_flags_are_refused_for_a_run_and_used_otherwise(
    system_run: tuple[Path, Path, list[str]], llama_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    out, _, _ = system_run
    pairs = str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS))
    code = main(["eval", "gap", "--model", str(out / "final"), "--data", pairs, "--system-prompt", "Other."])
    assert code == 2 and "renders prompts exactly as it trained" in capsys.readouterr().err
    assert main(["eval", "gap", "--model", str(llama_dir), "--data", pairs, "--system-prompt", "Other."]) == 0


def test_text_prompts_for_a_chat_model_are_warned_and_can_be_wrapped(
    llama_dir: Path, tokenizer: Any, tmp_path: Path, capsys: Any
) -> None:
    data = write_jsonl(tmp_path / "text.jsonl", [{"prompt": "What is one plus two?", "completion": " Three."}] * 4)
    assert main(sft_args(llama_dir, data, tmp_path / "verbatim", "train.max_steps=1")) == 0
    assert "4 of 4 prompts are plain text and are used verbatim" in capsys.readouterr().out
    assert (
        main(sft_args(llama_dir, data, tmp_path / "wrapped", "train.max_steps=1", "data.text_prompts=user_turn")) == 0
    )
    assert "used verbatim" not in capsys.readouterr().out
    wrapped = Renderer(tokenizer, text_prompts="user_turn")
    as_chat = Renderer(tokenizer).prompt_text([{"role": "user", "content": "What is one plus two?"}])
    assert wrapped.prompt_text("What is one plus two?") == as_chat != "What is one plus two?"
    example = Example("What is one plus two?", " Three.")
    assert wrapped.response_text(example.prompt, example.response)[0].startswith(" Three.")
