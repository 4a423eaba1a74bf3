"""`rewardsft train irft` end to end on a tiny model: stages, metrics, resume, LoRA snapshot, 2 processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rewardsft.cli import main
from rewardsft.steps import stages
from rewardsft.steps.stages import OVERFIT_NATS_PER_TOKEN
from rewardsft.training.metrics import read_metrics
from rewardsft.training.run import Run
from tests.integration.test_sft import weights

FAST = [
    "train.batch_size=4",
    "optim.lr=2e-3",
    "optim.name=adamw",
    "data.max_length=64",
    "data.max_prompt_length=32",
    "generation.max_new_tokens=12",
    "generation.batch_size=24",
    "logging.progress=false",
    "optim.warmup_ratio=0",
]


def irft_args(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "irft", f"model.name_or_path={model_dir}", f"data.path={data}", f"output_dir={out}", *FAST, *extra]


def stage_records(out: Path) -> dict[int, list[dict[str, Any]]]:
    by_stage: dict[int, list[dict[str, Any]]] = {}
    for rec in read_metrics(out / "metrics.jsonl"):
        if "irft/loss" in rec:
            by_stage.setdefault(rec["irft/stage"], []).append(rec)
    return by_stage


@pytest.mark.parametrize("stages", [1, 3])
def test_irft_end_to_end(stages: int, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(
            irft_args(
                llama_dir, builtin_jsonl, out, f"irft.stages={stages}", "train.epochs=2", "optim.schedule=constant"
            )
        )
        == 0
    )
    n_stages = 2 * stages  # two passes over the data
    for k in range(1, n_stages + 1):
        rows = [json.loads(x) for x in (out / "stages" / f"stage-{k}" / "generations.jsonl").read_text().splitlines()]
        assert len(rows) == 48 // stages
        assert {"index", "prompt", "demonstration", "generation", "stopped", "response_ids"} <= set(rows[0])
        assert rows[0]["prompt"].endswith("<|im_start|>assistant\n")  # the training chat template
        stats = json.loads((out / "stages" / f"stage-{k}" / "stats.json").read_text())
        assert 0 < stats["gen/mean_length"] <= 12
    # Each epoch's stages partition the data.
    for epoch in range(2):
        seen = [
            json.loads(x)["index"]
            for k in range(epoch * stages + 1, (epoch + 1) * stages + 1)
            for x in (out / "stages" / f"stage-{k}" / "generations.jsonl").read_text().splitlines()
        ]
        assert sorted(seen) == list(range(48))

    by_stage = stage_records(out)
    assert sorted(by_stage) == list(range(1, n_stages + 1))
    keys = {
        "irft/loss",
        "irft/demo_reward",
        "irft/gen_reward",
        "irft/margin",
        "irft/accuracy",
        "logps/demo",
        "logps/gen",
        "train/lr",
        "train/grad_norm",
    }
    assert keys <= set(by_stage[1][0])
    gen_logs = [r for r in read_metrics(out / "metrics.jsonl") if "gen/mean_length" in r]
    assert len(gen_logs) == n_stages
    for records in by_stage.values():
        # Each stage starts at policy == snapshot (margin 0, loss log 2), and the margin grows within it.
        assert records[0]["irft/margin"] == pytest.approx(0.0, abs=1e-5)
        assert records[0]["irft/loss"] == pytest.approx(0.6931, abs=1e-3)
        assert records[-1]["irft/margin"] > 0.05
        # The margin grows over the stage: its second half is above its first half on average.
        margins = [r["irft/margin"] for r in records]
        half = len(margins) // 2
        assert sum(margins[half:]) / (len(margins) - half) > sum(margins[:half]) / half >= 0
    before, after = weights(llama_dir), weights(out / "final")
    assert [n for n in before if torch.equal(before[n], after[n])] == []


def crash_in_stage(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    original = Run.log

    def crashing(self: Run, at: int, values: dict[str, float]) -> None:
        original(self, at, values)
        if at == step and "irft/loss" in values:
            raise RuntimeError("simulated kill")

    monkeypatch.setattr(Run, "log", crashing)


@pytest.mark.parametrize("mode", ["cached", "lora"])
def test_resume_mid_stage_2_equals_uninterrupted(
    mode: str, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 48 rows, 3 stages of 16, batch 4 -> 4 steps per stage; checkpoints every 2 steps.
    common = ["irft.stages=3", "train.save_every=2", "train.keep_checkpoints=10", f"irft.snapshot={mode}"]
    if mode == "lora":
        common += ["lora.enabled=true", "lora.r=4", "lora.alpha=8", "optim.lr=1e-2"]
    assert main(irft_args(llama_dir, builtin_jsonl, tmp_path / "whole", *common)) == 0

    out = tmp_path / "crashed"
    crash_in_stage(monkeypatch, step=7)  # stage 2 is steps 5-8; the newest checkpoint is step 6
    assert main(irft_args(llama_dir, builtin_jsonl, out, *common)) == 1
    monkeypatch.undo()
    assert (out / "stages" / "stage-2" / "generations.jsonl").is_file()
    assert not (out / "stages" / "stage-3").exists()

    sampled: list[int] = []
    original_sample = stages.sample_stage

    def counting(run: Any, model: Any, stage: stages.Stage, *args: Any) -> Any:
        sampled.append(stage.index + 1)
        return original_sample(run, model, stage, *args)

    monkeypatch.setattr(stages, "sample_stage", counting)
    assert main(irft_args(llama_dir, builtin_jsonl, out, *common, "resume=true")) == 0
    assert sampled == [3]  # stages 1 and 2 were not regenerated

    whole, resumed = weights(tmp_path / "whole" / "final"), weights(out / "final")
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "irft/loss" in r] == list(range(1, 13))
    for k in (1, 2, 3):
        name = f"stages/stage-{k}/generations.jsonl"
        assert (out / name).read_text() == (tmp_path / "whole" / name).read_text()
    if mode == "lora":
        assert (out / "checkpoints" / "step-6" / "base.safetensors").is_file()


def test_resume_with_other_sampling_settings_is_refused(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A stage's generations are reused on resume only when they were sampled with this run's ``generation``
    settings (a resume with other ones was not noticed: stage 2 trained on samples of the old settings)."""
    common = ["irft.stages=2", "train.save_every=2", "data.max_rows=32"]
    out = tmp_path / "run"
    crash_in_stage(monkeypatch, step=7)  # 2 stages of 16, batch 4: stage 2 is steps 5-8, checkpoint at 6
    assert main(irft_args(llama_dir, builtin_jsonl, out, *common)) == 1
    monkeypatch.undo()
    capsys.readouterr()
    assert main(irft_args(llama_dir, builtin_jsonl, out, *common, "resume=true", "generation.max_new_tokens=8")) == 2
    assert "generation.max_new_tokens=8 (was 12)" in capsys.readouterr().err
    # Prompts per call do not change what is sampled: not a different setting.
    assert main(irft_args(llama_dir, builtin_jsonl, out, *common, "resume=true", "generation.batch_size=5")) == 0
    assert "stage-2: reusing 16 generations" in capsys.readouterr().out


def test_overfitting_the_snapshot_is_warned_once_per_stage(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "run"
    assert (
        main(
            irft_args(
                llama_dir, builtin_jsonl, out, "irft.stages=1", "irft.beta=0.1", "optim.lr=3e-2", "train.batch_size=2"
            )
        )
        == 0
    )
    records = [r for r in read_metrics(out / "metrics.jsonl") if "irft/gen_reward" in r]
    warned = [r for r in records if r.get("irft/overfit_warning")]
    # The first step whose samples' log-ratio falls below −1.2 nats per generated token warns, once.
    first = next(r for r in records if r["irft/gen_logratio_per_token"] < -OVERFIT_NATS_PER_TOKEN)
    assert len(warned) == 1 and warned[0]["step"] == first["step"]
    assert capsys.readouterr().out.count("the snapshot is being overfit") == 1


def test_an_over_shoot_before_the_last_stage_is_not_warned(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: Any
) -> None:
    """Through the recipe: stage 1 of 2 over-shoots as far as the run above, stage 2 regenerates from the result
    (here cut to its first step, where the policy is its snapshot and the log-ratio is 0): no warning."""
    out = tmp_path / "run"
    hot = ["irft.beta=0.1", "optim.lr=3e-2", "train.batch_size=2"]
    # 48 rows in 2 stages of 24 pairs, each covered twice: 24 steps a stage at batch 2; stage 2 keeps one step.
    two_stages = ["irft.stages=2", "irft.epochs_per_stage=2", "train.max_steps=25"]
    assert main(irft_args(llama_dir, builtin_jsonl, out, *two_stages, *hot)) == 0
    records = [r for r in read_metrics(out / "metrics.jsonl") if "irft/gen_reward" in r]
    assert {r["irft/stage"] for r in records} == {1, 2}
    assert any(r["irft/gen_logratio_per_token"] < -OVERFIT_NATS_PER_TOKEN for r in records if r["irft/stage"] == 1)
    assert not any(r.get("irft/overfit_warning") for r in records)
    assert "the snapshot is being overfit" not in capsys.readouterr().out


def test_irft_does_not_warn_about_truncated_samples(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: Any
) -> None:
    """Unlike RFT: healthy IRFT stages in the real-data study had 66-94% of their samples cut by the cap."""
    args = irft_args(llama_dir, builtin_jsonl, tmp_path / "run", "irft.stages=1", "generation.max_new_tokens=2")
    assert main([*args, "train.max_steps=1"]) == 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[0]["gen/max_tokens_share"] > 0.9  # the RFT warning's threshold
    assert "hit generation.max_new_tokens" not in capsys.readouterr().out


def test_sft_weight_and_other_losses_run(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    for loss in ("hinge", "linear"):
        out = tmp_path / loss
        assert (
            main(
                irft_args(
                    llama_dir,
                    builtin_jsonl,
                    out,
                    "irft.stages=2",
                    f"irft.loss={loss}",
                    "irft.sft_weight=1.0",
                    "train.max_steps=3",
                    "irft.reset_optimizer_each_stage=true",
                )
            )
            == 0
        )
        records = [r for r in read_metrics(out / "metrics.jsonl") if "irft/loss" in r]
        assert len(records) == 3
        first = records[0]
        # At u = 0: hinge = 1, linear = 0, each plus the demonstrations' NLL (positive).
        assert first["irft/loss"] > (1.0 if loss == "hinge" else 0.0)


def test_snapshot_lora_needs_lora(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: Any) -> None:
    assert main(irft_args(llama_dir, builtin_jsonl, tmp_path / "r", "irft.snapshot=lora")) == 2
    assert "irft.snapshot=lora needs lora.enabled=true" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not found",
)
def test_two_processes_with_torchrun(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "rewardsft.cli",
        *irft_args(llama_dir, builtin_jsonl, out, "irft.stages=2"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    for k in (1, 2):
        rows = (out / "stages" / f"stage-{k}" / "generations.jsonl").read_text().splitlines()
        assert len(rows) == 24  # both ranks' shares gathered back in chunk order
    # 24 rows per stage, 4 per process per micro-batch x 2 processes -> 3 steps per stage.
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "irft/loss" in r] == list(range(1, 7))
    assert (out / "final" / "model.safetensors").is_file()


def max_logit_difference(first: Any, second: Any, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float((first(ids).logits - second(ids).logits).abs().max())


@pytest.mark.parametrize("snapshot", ["cached", "copy", "lora"])
def test_lora_stage_two_starts_at_margin_zero_and_exports_reproduce_final(
    snapshot: str, llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: Any
) -> None:
    """With the project's LoRA defaults (lora.dropout 0.05) the policy at a stage start IS its snapshot, and
    whatever is exported as an adapter loads onto the base it names and reproduces final/."""
    import peft
    from transformers import AutoModelForCausalLM

    out = tmp_path / snapshot
    extra = ["irft.stages=2", "lora.enabled=true", "lora.r=4", f"irft.snapshot={snapshot}"]
    assert main(irft_args(llama_dir, builtin_jsonl, out, *extra)) == 0
    first_of_stage = {k: recs[0] for k, recs in stage_records(out).items()}
    assert first_of_stage[2]["irft/margin"] == pytest.approx(0.0, abs=1e-6)
    assert first_of_stage[2]["irft/loss"] == pytest.approx(math.log(2), abs=1e-6)
    final = AutoModelForCausalLM.from_pretrained(str(out / "final"))
    ids = torch.tensor([[1, 7, 30, 52, 99, 120, 7, 3]])
    assert max_logit_difference(final, AutoModelForCausalLM.from_pretrained(str(llama_dir)), ids) > 1e-3
    if snapshot == "lora":
        # Every stage's adapter was merged into the base: no adapter reproduces final/ on the original base.
        assert not (out / "adapter").exists()
        return
    base = AutoModelForCausalLM.from_pretrained(str(llama_dir))
    adapted = peft.PeftModel.from_pretrained(base, str(out / "adapter"))
    assert max_logit_difference(adapted, final, ids) <= 1e-4


def test_dropout_kept_on_request_is_warned_and_moves_the_stage_start(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "dropout"
    extra = ["irft.stages=2", "lora.enabled=true", "lora.r=4", "lora.dropout=0.3", "train.dropout=true"]
    assert main(irft_args(llama_dir, builtin_jsonl, out, *extra)) == 0
    assert "warning: train.dropout=true" in capsys.readouterr().out
    assert abs(stage_records(out)[2][0]["irft/margin"]) > 1e-5  # what the default spares the user


def test_gradient_accumulation_does_not_change_the_irft_step(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path
) -> None:
    """22 rows in steps of 6: the last step is one micro-batch of 4 at batch 6, but 3 + 1 with batch 3 x 2
    accumulated. ℓ's mean over the step's pairs and the anchor's mean over its tokens must not care."""
    common = ["irft.stages=1", "irft.sft_weight=1.0", "data.max_rows=22", "generation.do_sample=false"]
    common += ["generation.batch_size=1", "train.eval_batch_size=1"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(irft_args(llama_dir, builtin_jsonl, whole, *common, "train.batch_size=6")) == 0
    assert main(irft_args(llama_dir, builtin_jsonl, split, *common, "train.batch_size=3", "train.grad_accum=2")) == 0
    losses = [[r["irft/loss"] for r in stage_records(out)[1]] for out in (whole, split)]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    a, b = weights(whole / "final"), weights(split / "final")
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-5


def test_shared_pair_forward_trains_as_split_does(llama_dir: Path, builtin_jsonl: Path, tmp_path: Path) -> None:
    """irft.pair_forward=shared through the whole recipe: the same generations, losses and final weights as the
    split backward (the default on CPU), with the SFT anchor on."""
    common = ["irft.stages=2", "irft.sft_weight=0.5", "data.max_rows=16", "train.max_steps=4"]
    outs = {mode: tmp_path / mode for mode in ("split", "shared")}
    for mode, out in outs.items():
        assert main(irft_args(llama_dir, builtin_jsonl, out, *common, f"irft.pair_forward={mode}")) == 0
    losses = [
        [r["irft/loss"] for r in read_metrics(out / "metrics.jsonl") if "irft/loss" in r] for out in outs.values()
    ]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    a, b, initial = (weights(path) for path in (outs["split"] / "final", outs["shared"] / "final", llama_dir))
    gap = max(float((a[n] - b[n]).abs().max()) for n in a)  # 2.8e-6 when written
    moved = min(float((a[n] - initial[n]).abs().max()) for n in a)  # every tensor moved (5e-3 at the least)
    assert gap < 1e-4 < moved


def test_packed_shared_pairs_train_as_a_row_per_pair(
    llama_dir: Path, builtin_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.packing=true with irft.pair_forward=shared: pairs packed several to a row train the same model."""
    from rewardsft.steps import pairs as pair_step

    original = pair_step.shared_pair_batch
    rows: dict[str, list[tuple[int, int]]] = {"false": [], "true": []}
    common = ["irft.stages=2", "irft.sft_weight=0.5", "data.max_rows=16", "train.max_steps=4"]
    outs = {packing: tmp_path / f"packing-{packing}" for packing in ("false", "true")}
    for packing, out in outs.items():

        def counted(chunk: Any, *args: Any, seen: list[tuple[int, int]] = rows[packing]) -> Any:
            batch = original(chunk, *args)
            seen.append((len(chunk), batch["input_ids"].shape[0]))  # pairs, rows
            return batch

        monkeypatch.setattr(pair_step, "shared_pair_batch", counted)
        settings = [*common, "irft.pair_forward=shared", f"train.packing={packing}"]
        assert main(irft_args(llama_dir, builtin_jsonl, out, *settings)) == 0
    assert all(n == r for n, r in rows["false"]) and any(r < n for n, r in rows["true"])  # it packed
    losses = [
        [r["irft/loss"] for r in read_metrics(out / "metrics.jsonl") if "irft/loss" in r] for out in outs.values()
    ]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    a, b, initial = (weights(path) for path in (outs["false"] / "final", outs["true"] / "final", llama_dir))
    gap = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert gap < 1e-4 < min(float((a[n] - initial[n]).abs().max()) for n in a)


def test_the_recipes_sample_through_the_sampler_they_are_handed(
    llama_dir: Path, builtin_jsonl: Path, split_data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sampler seam: IRFT's stages and RFT's rounds draw every sample from the recipe's ``make_sampler``, so a
    backend that answers every prompt with the same two tokens is what the pairs and the rollout hold."""
    import json

    from rewardsft.generation import Generation
    from rewardsft.recipes import irft as irft_recipe
    from rewardsft.steps import rollout
    from tests.integration.test_rft import rft_args

    calls: list[int] = []

    class Constant:
        def sample(self, model: Any, prompts: Any, seed: int) -> list[Generation]:
            calls.append(len(prompts))
            return [Generation([5, 6], stopped=False) for _ in prompts]

    monkeypatch.setattr(irft_recipe, "make_sampler", lambda *args: Constant())
    out = tmp_path / "irft"
    assert main(irft_args(llama_dir, builtin_jsonl, out, "irft.stages=2", "data.max_rows=16")) == 0
    rows = [json.loads(line) for line in (out / "stages" / "stage-1" / "generations.jsonl").read_text().splitlines()]
    assert calls == [8, 8] and {tuple(r["response_ids"]) for r in rows} == {(5, 6)}

    calls.clear()
    monkeypatch.setattr(rollout, "make_sampler", lambda *args: Constant())
    args = rft_args(llama_dir, split_data, tmp_path / "rft", "rft.iterations=2", "train.eval_every=0")
    assert main(args) == 0
    assert calls and all(n > 0 for n in calls)  # the held-out check at step 0 and each round's rollout
    records = [r for r in read_metrics(tmp_path / "rft" / "metrics.jsonl") if "gen/mean_length" in r]
    assert [r["gen/mean_length"] for r in records] == [2.0, 2.0]
