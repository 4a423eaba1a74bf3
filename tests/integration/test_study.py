"""``rewardsft study --quick`` end to end on the tiny model: it tunes on dev, evaluates on test, writes a verdict,
and a rerun trains nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import rewardsft
from rewardsft.cli import main
from rewardsft.data import load_examples
from rewardsft.data.builtin import builtin_rows
from rewardsft.studies.split import prompt_key
from rewardsft.training.metrics import read_metrics


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def study_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Half the built-in rows as demonstrations; the other half as pairs (its answer over the next row's)."""
    folder = tmp_path_factory.mktemp("study-data")
    rows = builtin_rows()
    held = rows[1::2]
    pairs = [
        {
            "prompt": r["messages"][0]["content"],
            "chosen": r["messages"][1]["content"],
            "rejected": held[(i + 1) % len(held)]["messages"][1]["content"],
        }
        for i, r in enumerate(held)
    ]
    return write_jsonl(folder / "demos.jsonl", rows[::2]), write_jsonl(folder / "pairs.jsonl", pairs)


def test_study_quick_tunes_on_dev_judges_on_test_and_a_rerun_trains_nothing(
    tmp_path: Path,
    llama_dir: Path,
    study_data: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    demos, pairs = study_data
    out = tmp_path / "study"
    run = {"pairs": pairs, "quick": True, "judge": "tests.judge_fns:length", "encoder": str(llama_dir)}
    record = rewardsft.study(llama_dir, demos, out, **run)
    printed = capsys.readouterr().out
    assert "estimated time" in printed and printed.count("] training ") == 8  # 4 methods x 2 tries

    # dev and test never share a prompt, and the verdict is on test
    dev, _ = load_examples(str(out / "split" / "dev.jsonl"), "train", "chosen_rejected")
    test, _ = load_examples(str(out / "split" / "test.jsonl"), "train", "chosen_rejected")
    assert not {prompt_key(e.prompt) for e in dev} & {prompt_key(e.prompt) for e in test}
    assert record["split"]["counts"]["test"] == len(test) > 0

    # every method (control included) got the same two tries; the chosen one has the best dev gap of those that
    # keep the base's likelihood of the dev preferred responses; the others' weights are gone, their evals kept
    tuning = json.loads((out / "tuning.json").read_text())
    assert set(tuning) == {"sft", "spin", "spin-from-sft", "sft-continued-b4-n4"}
    for name, entry in tuning.items():
        assert len(entry["tries"]) == 2
        floor = entry["base_dev_chosen_logp"]
        base_dev = json.loads((out / "base" / "eval" / "dev-gap" / "summary.json").read_text())
        assert floor == base_dev["chosen_logp"]["mean"]
        for t in entry["tries"]:
            dev = json.loads((out / "runs" / t["run"] / "eval" / "dev-gap" / "summary.json").read_text())
            assert (t["dev_chosen_logp"], t["dev_gap"]) == (dev["chosen_logp"]["mean"], dev["gap"]["mean"])
        kept = [t for t in entry["tries"] if t["dev_chosen_logp"] >= floor]
        best = max(kept or entry["tries"], key=lambda t: t["dev_gap"])
        assert entry["chosen"] == best["setting"] == record["chosen"][name]
        assert (entry["note"] is None) == bool(kept)
        assert (out / "runs" / best["run"] / "eval" / "test-gap" / "summary.json").is_file()
        assert (out / "runs" / best["run"] / "final").is_dir()
        for loser in (out / "runs" / t["run"] for t in entry["tries"] if t is not best):
            assert not (loser / "eval" / "test-gap").exists() and not (loser / "final").exists()
            assert (loser / "pruned.json").is_file() and (loser / "eval" / "dev-gap" / "summary.json").is_file()

    # the control spent what SPIN from SFT spent, from the same SFT model
    spin = out / "runs" / tuning["spin-from-sft"]["tries"][0]["run"]
    control = out / "runs" / tuning["sft-continued-b4-n4"]["tries"][0]["run"]
    assert tuning["spin-from-sft"]["tries"][0]["budget"] == tuning["sft-continued-b4-n4"]["tries"][0]["budget"]
    steps = [max(r["step"] for r in read_metrics(run / "metrics.jsonl")) for run in (spin, control)]
    assert steps[0] == steps[1] == 4
    sft_run = next(t["run"] for t in tuning["sft"]["tries"] if t["setting"] == tuning["sft"]["chosen"])
    starts = {run_config(run)["model"]["name_or_path"] for run in (spin, control)}
    assert starts == {str(out / "runs" / sft_run / "final")}

    # the verdict: paired rows for every method, against tuned SFT and against the control, and in words
    groups = {r["group"] for r in record["vs_sft"]}
    assert groups == {"spin", "spin-from-sft", "sft-continued-b4-n4"}
    assert {r["group"] for r in record["vs_control"]} == {"spin-from-sft"}
    assert {r["metric"] for r in record["vs_sft"]} == {"gap", "gap_mean", "correct", "chosen_logp_mean"}
    assert record["winrate"] and {r["metric"] for r in record["winrate"]} == {"win_rate"}
    # human-likeness of every test run's samples (and the base's), paired against tuned SFT's
    assert [r["method"] for r in record["human_likeness"]] == ["base model", *tuning]
    assert all(0 <= r["mauve"] <= 1 for r in record["human_likeness"])
    assert {(r["group"], r["metric"]) for r in record["likeness"]} == {(g, "human_prob") for g in groups}
    assert record["answer"][0].startswith(("**Yes, on your test pairs", "**No reward-learning method"))
    assert any("rest on 1 seed" in line for line in record["answer"])
    markdown = (out / "study.md").read_text()
    assert record["answer"][0] in markdown and "## Tuning on the dev part" in markdown

    # finished runs keep final/ and drop their checkpoints (never resumed again; they fill disks)
    assert not list((out / "runs").glob("*/checkpoints"))

    # a rerun trains and evaluates nothing and writes the same verdict
    derived = {"study.md", "study.json", "tuning.json"}  # rewritten from the finished runs' evaluations
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in derived}
    again = rewardsft.study(llama_dir, demos, out, **run)
    rerun = capsys.readouterr().out
    assert "] training " not in rerun and "nothing left to train" in rerun
    assert again["answer"] == record["answer"] and json.loads((out / "tuning.json").read_text()) == tuning
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a run that lost its final/ (killed while saving it) is taken up again under its own settings
    chosen_spin = out / "runs" / (tuning["spin"]["chosen"].replace("lr=", "spin-lr").replace(" passes=", "-p") + "-s0")
    shutil.rmtree(chosen_spin / "final")
    rewardsft.study(llama_dir, demos, out, **run)
    assert "resuming" in capsys.readouterr().out and (chosen_spin / "final").is_dir()

    # a rerun that chooses a pruned try (another rule) trains it again, and prunes the one chosen before
    from rewardsft.studies import runner

    loser = next(t for t in tuning["spin"]["tries"] if t["setting"] != tuning["spin"]["chosen"])

    def spin_the_other(tries: list[dict[str, Any]], floor: float) -> tuple[int, str | None]:
        names = [t["run"] for t in tries]
        return (names.index(loser["run"]), None) if loser["run"] in names else choose(tries, floor)

    choose = runner.choose
    monkeypatch.setattr(runner, "choose", spin_the_other)
    rewardsft.study(llama_dir, demos, out, **run)
    assert (out / "runs" / loser["run"] / "final").is_dir() and (chosen_spin / "pruned.json").is_file()
    assert json.loads((out / "tuning.json").read_text())["spin"]["chosen"] == loser["setting"]
    monkeypatch.undo()

    # a rerun with other settings does not reuse runs trained with the old ones
    with pytest.raises(
        rewardsft.ConfigError, match=r"was trained with data\.max_length=512, but this study now sets 200"
    ):
        rewardsft.study(llama_dir, demos, out, pairs=pairs, quick=True, overrides=["data.max_length=200"])


def run_config(run: Path) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((run / "config.yaml").read_text()))


def test_study_without_pairs_measures_held_out_demonstrations_against_base_samples(
    tmp_path: Path, llama_dir: Path, study_data: tuple[str, str]
) -> None:
    demos, _ = study_data
    record = rewardsft.study(
        llama_dir, demos, tmp_path / "s", methods=["spin-from-sft"], quick=True, lrs=[1e-3], holdout=0.4
    )
    assert record["split"]["kind"] == "demonstrations"
    pairs, _ = load_examples(str(tmp_path / "s" / "split" / "test-pairs.jsonl"), "train", "chosen_rejected")
    held, _ = load_examples(str(tmp_path / "s" / "split" / "test-demonstrations.jsonl"), "train")
    assert [p.response for p in pairs] == [d.response for d in held] and all(p.rejected for p in pairs)
    assert any("without preference pairs" in line for line in record["answer"])
    train, _ = load_examples(str(tmp_path / "s" / "split" / "train.jsonl"), "train")
    assert not {prompt_key(e.prompt) for e in train} & {prompt_key(e.prompt) for e in held}


def test_study_bad_input_exits_2_naming_the_file_and_row(
    tmp_path: Path, llama_dir: Path, study_data: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    demos, _ = study_data
    bad = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q"}])
    args = ["study", "--model", str(llama_dir), "--data", demos, "--pairs", bad, "--out", str(tmp_path / "o")]
    assert main([*args, "--quick"]) == 2
    assert "pairs.jsonl: row 2, field 'chosen': missing" in capsys.readouterr().err
    assert main([*args, "optim.lr=1e-5"]) == 2
    assert "use --lrs" in capsys.readouterr().err
    assert main([*args, "--lrs", "1e-5,fast"]) == 2
    assert "'1e-5,fast' is not a comma-separated list" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    taken = [*args[:-1], str(tmp_path / "taken"), "--quick"]
    assert main(taken) == 2 and "is not a study folder" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
