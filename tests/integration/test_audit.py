"""``rewardsft audit`` on the demo's task: a base with a habit (copying instead of reversing), demonstrations with
25% habitual rows injected; the audit must find them better than the first baseline a user tries (the base's own
likelihood), point at the right input lines, leave a clean file that trains, and report rejected rows by line."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

import rewardsft
from rewardsft.audits.folds import assign_folds, flag, percentiles, precision_recall, standardise_within
from rewardsft.cli import main
from rewardsft.demo.run import COMMON, DemoSettings, make_base
from rewardsft.demo.task import TaskSizes, is_habit, write_task

NOISE = 0.25
RUN = [c for c in COMMON if not c.startswith(("data.", "logging."))]  # the base is a run: renders as trained
GENERATE = ["generation.max_new_tokens=12", "generation.batch_size=64"]
TINY = [*RUN, *GENERATE, "reward_model.lr=1e-3", "rft.samples_per_prompt=2"]
IRFT = [*RUN, *GENERATE, "optim.name=adamw", "optim.lr=1e-3"]


@pytest.fixture(scope="module")
def habit_task(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the habit-laden base's final/, demonstrations with 25% habitual copies and two malformed lines)."""
    folder = tmp_path_factory.mktemp("audit-task")
    # a strong habit (60% copies in pre-training): the base's own samples copy about 30% of the time, more than the
    # injected 25% of the demonstrations do, so "like the model's own samples" means "a copy"
    sizes = TaskSizes(pretrain=1500, habit_share=0.6, demonstrations=120, dev=10, test=10)
    settings = DemoSettings(sizes=sizes, pretrain_epochs=20)
    data = write_task(folder / "data", settings.sizes, seed=0, noise=NOISE)
    base = make_base(folder, data, settings)
    lines = data.demonstrations.read_text().splitlines()
    lines.insert(7, json.dumps({"prompt": "reverse a b c =", "completion": 3}))  # line 8: completion not text
    lines.insert(40, "[1, 2]")  # line 41: not an object
    noisy = folder / "noisy.jsonl"
    noisy.write_text("\n".join(lines) + "\n")
    return base, noisy


@pytest.mark.parametrize("reward", ["explicit", "implicit"])
def test_the_audit_flags_injected_rows_better_than_the_likelihood_baseline(
    reward: str, habit_task: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base, noisy = habit_task
    out = tmp_path / "audit"
    settings = TINY if reward == "explicit" else IRFT
    record = rewardsft.audit(base, noisy, out, reward=reward, folds=4, flag_share=NOISE, overrides=settings)
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    raw = noisy.read_text().splitlines()
    assert record["rows"] == len(scores) == 120 and record["rejected"] == 2
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejected] == [8, 41] and "field 'completion'" in rejected[0]["error"]

    # out of fold: no fold's reward was trained on a row that fold scores
    for fold in range(4):
        trained = {line for line in (out / "folds" / str(fold) / "train.jsonl").read_text().splitlines()}
        scored = [json.loads(raw[e["row"] - 1]) for e in scores if e["fold"] == fold]
        assert scored and not any(json.dumps(r, ensure_ascii=False) in trained for r in scored)

    # every score points at its input line; truth from the task's own habit test
    bad, flagged, baseline = [], [], []
    for entry in scores:
        row = json.loads(raw[entry["row"] - 1])
        assert entry["prompt"] == row["prompt"][:80] and entry["response"] == row["completion"][:80]
        bad.append(is_habit(row["prompt"], row["completion"]))
        flagged.append(entry["flagged"])
        baseline.append(entry["baseline_logp_per_token"])
    assert sum(bad) == round(NOISE * 120) and sum(flagged) == 30
    audit_precision, _ = precision_recall(flagged, bad)
    # the baseline a user tries first: flag the rows the base finds least likely (highest NLL per token)
    nll_precision, _ = precision_recall(flag(baseline, NOISE), bad)
    assert audit_precision > nll_precision, (audit_precision, nll_precision)
    if reward == "implicit":
        return  # the rest is the same code for both rewards

    # flagged.jsonl is the flagged rows, lowest first; clean.jsonl is the rest, as they were in the input
    flagged_rows = [json.loads(line) for line in (out / "flagged.jsonl").read_text().splitlines()]
    assert [r["score"] for r in flagged_rows] == sorted(r["score"] for r in flagged_rows)
    kept_lines = [e["row"] for e in scores if not e["flagged"]]
    assert (out / "clean.jsonl").read_text().splitlines() == [json.dumps(json.loads(raw[n - 1])) for n in kept_lines]
    report = (out / "report.md").read_text()
    assert "out of fold" in report and "row 8" in report and (out / "report.html").is_file()
    assert not list((out / "folds").glob("*/run"))  # the fold rewards are removed once scored

    # clean.jsonl trains
    sft = tmp_path / "sft"
    args = ["train", "sft", f"model.name_or_path={base}", f"data.path={out / 'clean.jsonl'}", f"output_dir={sft}"]
    assert main([*args, *COMMON, "train.max_steps=2"]) == 0 and (sft / "final").is_dir()

    # a rerun continues (every fold is finished: nothing is trained) and other settings are refused
    monkeypatch.setattr("rewardsft.recipes.run_recipe", lambda *a, **k: pytest.fail("a finished fold was retrained"))
    again = rewardsft.audit(base, noisy, out, reward=reward, folds=4, flag_share=0.5, overrides=settings)
    assert again["flagged"] == 60  # another share is read from the finished folds
    monkeypatch.chdir(out.parent)  # the same audit named by relative paths from another folder: continued too
    relative = [os.path.relpath(p, out.parent) for p in (base, noisy)]
    assert rewardsft.audit(*relative, "audit", reward=reward, folds=4, overrides=settings)["rows"] == 120
    # a folder as the first version wrote it is continued: no against_samples key, rewards.json a bare list, and
    # the paths (and the start model in the fingerprint) as typed, here relative to the current folder
    from rewardsft.audits.runner import AuditSettings, fold_config, read_rows, row_key, start_model
    from rewardsft.studies.split import fingerprint

    typed = AuditSettings(model=relative[0], data=relative[1], out=Path("audit"), reward=reward, folds=4)
    examples = read_rows(typed).examples
    fold_of = assign_folds([row_key(ex) for ex in examples], 4, 0)
    start, rendering = start_model(typed, fold_config(typed, out / "folds" / "0", "unused", 1))
    stored = json.loads((out / "settings.json").read_text())
    del stored["against_samples"]
    stored |= {"model": relative[0], "data": relative[1], "out": "audit"}
    stored["fingerprint"] = fingerprint([row_key(ex) for ex in examples], fold_of, start, asdict(rendering.settings))
    assert (
        start == relative[0] and stored["fingerprint"] != json.loads((out / "settings.json").read_text())["fingerprint"]
    )
    (out / "settings.json").write_text(json.dumps(stored))
    for done in (out / "folds").glob("*/rewards.json"):
        done.write_text(json.dumps(json.loads(done.read_text())["rewards"]))
    assert rewardsft.audit(*relative, "audit", reward=reward, folds=4, overrides=settings)["rows"] == 120
    with pytest.raises(rewardsft.ConfigError, match="folds=4"):
        rewardsft.audit(base, noisy, out, reward=reward, folds=3, overrides=settings)
    original = noisy.read_text()
    noisy.write_text(original.replace("reverse", "reverse ", 1))  # the same file, edited since
    try:
        with pytest.raises(rewardsft.ConfigError, match="other rows or another start model"):
            rewardsft.audit(base, noisy, out, reward=reward, folds=4, overrides=settings)
    finally:
        noisy.write_text(original)
    with pytest.raises(rewardsft.ConfigError, match="set by the audit itself"):
        rewardsft.audit(base, noisy, tmp_path / "other", reward="explicit", overrides=["rft.iterations=3"])
    with pytest.raises(rewardsft.ConfigError, match="takes no policy step"):
        rewardsft.audit(base, noisy, tmp_path / "other", reward="explicit", overrides=["optim.lr=1e-4"])


def test_against_samples_scores_each_row_against_its_prompts_samples(
    habit_task: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--against-samples N: each held-out prompt gets N start-model samples (kept, prompt-major), scored by the same
    fold's reward; a row's score is the z-score within its fold of its reward minus their mean."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base, noisy = habit_task
    out = tmp_path / "audit"
    rewardsft.audit(base, noisy, out, folds=2, passes=1, against_samples=3, overrides=IRFT, keep_models=True)
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    raw = noisy.read_text().splitlines()
    for fold in (0, 1):
        held = [e for e in scores if e["fold"] == fold]
        samples = [json.loads(line) for line in (out / "folds" / str(fold) / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 3 * len(held)
        assert [s["prompt"] for s in samples] == [json.loads(raw[e["row"] - 1])["prompt"] for e in held for _ in "abc"]
        # the kept samples' rewards under the fold's kept model are what was subtracted
        from rewardsft.audits.runner import implicit_rewards
        from rewardsft.config import ModelConfig
        from rewardsft.data import Example

        again = implicit_rewards(
            out / "folds" / str(fold) / "run", ModelConfig(name_or_path=str(base)),
            [Example(s["prompt"], s["completion"]) for s in samples],
        )  # fmt: skip
        means = [sum(again[3 * i : 3 * i + 3]) / 3 for i in range(len(held))]
        assert [e["sample_reward"] for e in held] == pytest.approx(means, abs=1e-5)
    adjusted = [e["reward"] - e["sample_reward"] for e in scores]
    assert [e["score"] for e in scores] == pytest.approx(standardise_within(adjusted, [e["fold"] for e in scores]))
    assert len({e["sample_reward"] for e in scores}) > 1  # samples differ: not a constant shift
    assert "minus the mean reward of 3 samples" in (out / "report.md").read_text()
    # the samples are the start model's, drawn with the fold's seed (not the trained model's)
    from rewardsft.config import ModelConfig
    from rewardsft.generation import sample_responses
    from rewardsft.layout import Rendering, render_settings, run_config
    from rewardsft.training.step import derive_seed

    trained = run_config(out / "folds" / "1" / "run")
    kept = [json.loads(line) for line in (out / "folds" / "1" / "samples.jsonl").read_text().splitlines()]
    prompts = [s["prompt"] for s in kept[::3]]
    rendering = Rendering(str(base), render_settings(trained.data))
    redrawn = sample_responses(rendering, prompts, trained.generation, derive_seed(0, "audit-samples", 1), 3)
    assert [r.text for r in redrawn] == [s["completion"] for s in kept]
    # a rerun continues from the finished folds (nothing trained, nothing sampled) to the same scores
    monkeypatch.setattr("rewardsft.recipes.run_recipe", lambda *a, **k: pytest.fail("a finished fold was retrained"))
    monkeypatch.setattr("rewardsft.generation.sample_responses", lambda *a, **k: pytest.fail("sampled again"))
    rewardsft.audit(base, noisy, out, folds=2, passes=1, against_samples=3, overrides=IRFT)
    assert [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()] == scores
    with pytest.raises(rewardsft.ConfigError, match="against_samples=3"):
        rewardsft.audit(base, noisy, out, folds=2, passes=1, overrides=IRFT)  # the same folder, other scoring


def test_bad_input_exits_2_naming_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n" for i in range(5)))
    assert main(["audit", "--model", "unused", "--data", str(few), "--out", str(tmp_path / "a")]) == 2
    assert "5 usable rows; the audit needs at least 10" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing written for a failed start
    enough = tmp_path / "enough.jsonl"
    enough.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n" for i in range(12)))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        assert main(["audit", "--model", "m", "--data", str(enough), "--out", str(busy), *extra]) == 2
        assert "not an audit folder" in capsys.readouterr().err and (busy / "mine.txt").read_text() == "keep"
    assert main(["audit", "--model", "m", "--data", str(enough), "--out", str(tmp_path / "b"), "--folds", "1"]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["audit", "--model", "m", "--data", str(enough), "--out", str(enough)]) == 2
    assert "is a file; --out is the audit's folder" in capsys.readouterr().err and enough.stat().st_size > 0
    greedy = ["--against-samples", "2", "generation.do_sample=false"]
    assert main(["audit", "--model", "m", "--data", str(enough), "--out", str(tmp_path / "c"), *greedy]) == 2
    assert "same greedy answer every time" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert (
        main(["audit", "--model", "m", "--data", str(enough), "--out", str(tmp_path / "c"), "--against-samples", "-1"])
        == 2
    )
    assert "a number of samples" in capsys.readouterr().err


def test_folds_keep_identical_rows_together_and_balance_sizes() -> None:
    keys = ["a", "a", "b", "c", "d", "e", "f", "g", "a", "h"]
    folds = assign_folds(keys, 3, seed=0)
    assert len({folds[i] for i, k in enumerate(keys) if k == "a"}) == 1
    sizes = sorted(folds.count(f) for f in range(3))
    assert sum(sizes) == 10 and sizes[-1] - sizes[0] <= 3  # the triple "a" is one unit
    with pytest.raises(ValueError, match="cannot fill"):
        assign_folds(["a", "a", "b"], 3, seed=0)


def test_scores_standardise_within_folds_and_flag_the_lowest() -> None:
    z = standardise_within([1.0, 3.0, 10.0, 30.0], [0, 0, 1, 1])
    assert z == pytest.approx([-1.0, 1.0, -1.0, 1.0])  # each fold on its own scale
    assert flag([0.5, -2.0, 1.0, -1.0], share=0.5) == [False, True, False, True]
    assert flag([0.5, -2.0, 1.0, -1.0], below=0.0) == [False, True, False, True]
    assert percentiles([3.0, 1.0, 2.0, 2.0]) == pytest.approx([1.0, 0.0, 0.5, 0.5])
    assert precision_recall([True, True, False], [True, False, True]) == (0.5, 0.5)
