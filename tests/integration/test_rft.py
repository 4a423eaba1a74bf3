"""`rewardsft train rft`, `rewardsft score` and `rewardsft best-of-n` end to end on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rewardsft.cli import main
from rewardsft.training.metrics import read_metrics
from rewardsft.training.run import Run
from tests.conftest import write_jsonl
from tests.integration.test_sft import weights

FAST = [
    "rft.prompts_per_iteration=12",
    "rft.samples_per_prompt=2",
    "train.batch_size=8",
    "optim.lr=2e-3",
    "reward_model.lr=2e-3",
    "optim.warmup_ratio=0",
    "optim.schedule=constant",
    "generation.max_new_tokens=10",
    "data.max_length=64",
    "data.max_prompt_length=32",
    "logging.progress=false",
]


def rft_args(model_dir: Path, data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "rft",
        f"model.name_or_path={model_dir}",
        f"data.path={data[0]}",
        f"data.eval_path={data[1]}",
        f"output_dir={out}",
        *FAST,
        *extra,
    ]


def sample_and_score(policy_dir: Path, reward_dir: Path, prompts: Path, tmp: Path) -> float:
    out = tmp / f"bon-{policy_dir.name}.jsonl"
    assert (
        main(
            [
                "best-of-n",
                "--model",
                str(policy_dir),
                "--reward-model",
                str(reward_dir),
                "--prompts",
                str(prompts),
                "--n",
                "2",
                "--max-new-tokens",
                "10",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return sum(c["score"] for r in records for c in r["candidates"]) / sum(len(r["candidates"]) for r in records)


def test_rft_end_to_end(llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = rft_args(llama_dir, split_data, out, "rft.iterations=8", "train.save_every=4", "train.eval_every=3")
    assert main(args) == 0
    # Artefacts: the policy and an exportable reward model.
    reward = AutoModelForSequenceClassification.from_pretrained(str(out / "reward_model"))
    assert reward.config.num_labels == 1
    assert (out / "checkpoints" / "step-8" / "reward_model" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "step-8" / "optimizers.pt").is_file()
    records = read_metrics(out / "metrics.jsonl")
    rounds = [r for r in records if "rm/loss" in r]
    assert [r["step"] for r in rounds] == list(range(1, 9))
    keys = {
        "rm/loss",
        "rm/accuracy",
        "rm/margin",
        "policy/reward",
        "policy/kl",
        "policy/entropy",
        "policy/loss",
        "gen/mean_length",
        "rm/grad_norm",
        "train/grad_norm",
    }
    assert keys <= set(rounds[0])
    # train.eval_every=3: the held-out check runs at rounds 3, 6 and the last, not every round.
    assert [r["step"] for r in records if "eval/rm_accuracy" in r] == [0, 3, 6, 8]
    # The reward model learns to separate held-out demonstrations from the policy's generations.
    before = next(r for r in records if r["step"] == 0)["eval/rm_accuracy"]
    after = rounds[-1]["eval/rm_accuracy"]
    assert after >= 0.9 and after > before
    assert rounds[-1]["rm/loss"] < rounds[0]["rm/loss"]
    assert rounds[-1]["policy/kl"] > 0  # the policy moved away from its start
    # Every policy parameter changed.
    start, final = weights(llama_dir), weights(out / "final")
    assert [n for n in start if torch.equal(start[n], final[n])] == []
    # Against the learned reward model held fixed (reward_steps=0), the policy step raises the policy's reward.
    fixed = tmp_path / "fixed-rm"
    assert (
        main(
            rft_args(
                llama_dir,
                split_data,
                fixed,
                "rft.iterations=8",
                "rft.reward_steps=0",
                f"reward_model.name_or_path={out / 'reward_model'}",
                "optim.lr=5e-3",
                "rft.kl_coef=0.0",
            )
        )
        == 0
    )
    rewards = [r["policy/reward"] for r in read_metrics(fixed / "metrics.jsonl") if "policy/reward" in r]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3
    # ... and the final reward model prefers the final policy's samples to the initial model's.
    assert sample_and_score(fixed / "final", out / "reward_model", split_data[1], tmp_path) > sample_and_score(
        llama_dir, out / "reward_model", split_data[1], tmp_path
    )


def test_rft_resume_equals_uninterrupted(
    llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["rft.iterations=4", "train.save_every=2", "train.keep_checkpoints=5"]
    assert main(rft_args(llama_dir, split_data, tmp_path / "whole", *common)) == 0
    original = Run.log

    def crash(self: Run, step: int, values: dict[str, float]) -> None:
        original(self, step, values)
        if step == 3:
            raise RuntimeError("simulated kill")

    monkeypatch.setattr(Run, "log", crash)
    assert main(rft_args(llama_dir, split_data, tmp_path / "crashed", *common)) == 1
    monkeypatch.undo()
    assert main(rft_args(llama_dir, split_data, tmp_path / "crashed", *common, "resume=true")) == 0
    for name in ("final", "reward_model"):
        a, b = tmp_path / "whole" / name, tmp_path / "crashed" / name
        wa = AutoModelForSequenceClassification.from_pretrained(str(a)) if name != "final" else None
        wb = AutoModelForSequenceClassification.from_pretrained(str(b)) if name != "final" else None
        if name == "final":
            left, right = weights(a), weights(b)
        else:
            left, right = dict(wa.named_parameters()), dict(wb.named_parameters())  # type: ignore[union-attr]
        assert all(torch.equal(left[n], right[n]) for n in left), name
    assert [r["step"] for r in read_metrics(tmp_path / "crashed" / "metrics.jsonl") if "rm/loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize("variant", ["full", "lora-and-preferences"])
def test_shared_rollout_rows_train_the_same_policy(
    variant: str, llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """rft.rollout_forward=shared (one row per prompt with its k samples; the reward step's demonstration once per
    prompt) gives the rounds and the policy of a row per sample: the same samples, rewards, KL, losses and gradient
    norms, the same weights up to float rounding. 11 prompts of 3 samples make uneven micro-batches (6 x 5 and 3
    samples), two policy steps make the clipped loss non-zero; the second variant has a LoRA policy (its reference
    is the adapter-disabled policy), a LoRA reward model and preference pairs mixed into the reward step."""
    extra = ["rft.iterations=3", "rft.samples_per_prompt=3", "rft.prompts_per_iteration=11", "rft.policy_steps=2"]
    if variant != "full":
        prefs = write_jsonl(
            tmp_path / "prefs.jsonl",
            [{"prompt": "What is one plus one?", "chosen": " Two.", "rejected": " Seven."}] * 3,
        )
        extra += ["lora.enabled=true", "lora.r=4", "reward_model.lora=true", f"rft.preference_path={prefs}"]
        extra += ["rft.preference_weight=0.5"]
    runs = {}
    for mode in ("separate", "shared"):
        runs[mode] = tmp_path / mode
        assert main(rft_args(llama_dir, split_data, runs[mode], *extra, f"rft.rollout_forward={mode}")) == 0
    records = {
        mode: [r for r in read_metrics(out / "metrics.jsonl") if "policy/loss" in r] for mode, out in runs.items()
    }
    assert len(records["shared"]) == 3
    keys = ("policy/kl", "policy/loss", "policy/reward", "rm/loss", "gen/mean_length", "train/grad_norm")
    for a, b in zip(records["separate"], records["shared"], strict=True):
        for key in (*keys, "rm/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert any(r["policy/kl"] != 0 for r in records["shared"][1:])  # the KL term is exercised after round 1
    assert any(abs(r["policy/loss"]) > 1e-6 for r in records["shared"])  # not the zero of a first step alone
    left, right, start = (weights(path) for path in (runs["separate"] / "final", runs["shared"] / "final", llama_dir))
    gap = max(float((left[n] - right[n]).abs().max()) for n in left)
    moved = max(float((left[n] - start[n]).abs().max()) for n in left)
    # Adam divides by the gradient's own scale, so float rounding on near-zero gradient entries grows to ~1e-4 over
    # six policy steps (1.2e-4 against a movement of 1.0e-2 when written); a wrong gradient moves by the movement.
    assert gap < 0.05 * moved


def test_rft_with_lora_policy_and_reward_model(llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "lora"
    prefs = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {
                "prompt": "What is the capital of Peru?",
                "chosen": " The capital of Peru is Lima.",
                "rejected": " Paris.",
            },
            {"prompt": "What is one plus one?", "chosen": " One plus one is two.", "rejected": " Seven."},
        ],
    )
    assert (
        main(
            rft_args(
                llama_dir,
                split_data,
                out,
                "rft.iterations=2",
                "lora.enabled=true",
                "lora.r=4",
                "reward_model.lora=true",
                f"rft.preference_path={prefs}",
                "rft.preference_weight=0.5",
                "train.save_every=1",
            )
        )
        == 0
    )
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "checkpoints" / "step-2" / "reward_adapter" / "adapter_config.json").is_file()
    reward = AutoModelForSequenceClassification.from_pretrained(str(out / "reward_model"))
    assert not any("lora" in n for n, _ in reward.named_parameters())  # merged for export
    assert (
        main(
            rft_args(
                llama_dir,
                split_data,
                out,
                "rft.iterations=3",
                "lora.enabled=true",
                "lora.r=4",
                "reward_model.lora=true",
                "resume=true",
            )
        )
        == 0
    )
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "rm/loss" in r] == [1, 2, 3]


def test_score_command_scores_both_sides(llama_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from rewardsft.reward import load_reward_model

    reward_dir = tmp_path / "rm"
    model = load_reward_model(llama_dir, torch.device("cpu"))
    model.save_pretrained(str(reward_dir))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(llama_dir)).save_pretrained(str(reward_dir))
    data = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
            {"chosen": "\n\nHuman: Hey\n\nAssistant: Hi!", "rejected": "\n\nHuman: Hey\n\nAssistant: No."},
        ],
    )
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--reward-model", str(reward_dir), "--data", str(data), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == [1, 2]
    assert all(isinstance(r["score"], float) and isinstance(r["rejected_score"], float) for r in rows)
    assert rows[0]["score"] != rows[0]["rejected_score"]
    # Scores do not depend on what else is in the batch.
    assert main(["score", "--reward-model", str(reward_dir), "--data", str(data), "--batch-size", "1"]) == 0
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["score"] for r in again] == pytest.approx([r["score"] for r in rows], abs=1e-5)


def test_bad_preference_file_exits_2_before_writing(
    llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path, capsys: Any
) -> None:
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "Hi", "chosen": " Hello."}])
    out = tmp_path / "run"
    assert main(rft_args(llama_dir, split_data, out, f"rft.preference_path={prefs}", "rft.preference_weight=1")) == 2
    assert "prefs.jsonl: row 1, field 'rejected': missing" in capsys.readouterr().err
    assert not out.exists()


def test_rft_honours_log_every_eval_every_and_clips_both_models(
    llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rewardsft.recipes import rft

    clips: list[float | None] = []
    original = rft.optimizer_step

    def spy(
        accelerator: Any, params: Any, optimizer: Any, scheduler: Any, max_grad_norm: float | None, *rest: Any
    ) -> Any:
        clips.append(max_grad_norm)
        return original(accelerator, params, optimizer, scheduler, max_grad_norm, *rest)

    monkeypatch.setattr(rft, "optimizer_step", spy)
    out = tmp_path / "run"
    extra = ["rft.iterations=4", "train.log_every=2", "train.eval_every=3", "train.max_grad_norm=0.25"]
    assert main(rft_args(llama_dir, split_data, out, *extra)) == 0
    records = read_metrics(out / "metrics.jsonl")
    # Logged every 2 rounds, plus round 3 where the held-out evaluation ran, plus the last.
    assert [r["step"] for r in records if "rm/loss" in r] == [2, 3, 4]
    assert [r["step"] for r in records if "eval/rm_accuracy" in r] == [0, 3, 4]
    assert clips == [0.25] * 8  # reward model and policy, every round


def test_rft_warns_once_when_every_sample_is_truncated(
    llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = rft_args(llama_dir, split_data, tmp_path / "run", "rft.iterations=3", "generation.max_new_tokens=2")
    assert main(args) == 0
    assert capsys.readouterr().out.count("hit generation.max_new_tokens=2") == 1


def test_reward_step_alone_skips_the_policy_forwards(
    llama_dir: Path, split_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rft.policy_steps=0 (the audit's explicit reward): the rollout's policy and reference log-prob forwards, which
    only a policy step reads, are skipped and no reference copy is built; the reward model trains exactly as it does
    with them (they are no-grad and draw no random numbers), and the policy stays the start model."""
    import rewardsft.steps.rollout as rollout

    calls: dict[str, Any] = {"forwards": 0, "references": set()}
    counted, made = rollout.sample_token_logps, rollout.make_rollout

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["forwards"] += 1
        return counted(*args, **kwargs)

    def making(run: Run, policy: Any, reference: Any, *args: Any, logps: bool) -> Any:
        calls["references"].add(reference)
        return made(run, policy, reference, *args, logps=logps)

    monkeypatch.setattr(rollout, "sample_token_logps", counting)
    monkeypatch.setattr("rewardsft.recipes.rft.make_rollout", making)
    extra = ["rft.iterations=3", "rft.policy_steps=0"]
    skipped, forced = tmp_path / "skipped", tmp_path / "forced"
    assert main(rft_args(llama_dir, split_data, skipped, *extra)) == 0
    assert calls == {"forwards": 0, "references": {None}}
    # The forwards as a policy step would have them; the policy stands for π_init, which it is with no policy step.
    forcing = lambda run, policy, _, *a, logps: made(run, policy, policy, *a, logps=True)  # noqa: E731
    monkeypatch.setattr("rewardsft.recipes.rft.make_rollout", forcing)
    assert main(rft_args(llama_dir, split_data, forced, *extra)) == 0
    assert calls["forwards"] > 0

    rounds = {out: [r for r in read_metrics(out / "metrics.jsonl") if "rm/loss" in r] for out in (skipped, forced)}
    assert len(rounds[skipped]) == 3
    for a, b in zip(rounds[skipped], rounds[forced], strict=True):
        assert "policy/kl" not in a and "policy/entropy" not in a and "policy/loss" not in a
        for key in ("rm/loss", "rm/accuracy", "rm/grad_norm", "policy/reward", "gen/mean_length"):
            assert a[key] == b[key], key
    trained, again = (
        dict(AutoModelForSequenceClassification.from_pretrained(str(out / "reward_model")).named_parameters())
        for out in (skipped, forced)
    )
    assert all(torch.equal(trained[n], again[n]) for n in trained)
    start, policy = weights(llama_dir), weights(skipped / "final")
    assert all(torch.equal(start[n], policy[n]) for n in start)
