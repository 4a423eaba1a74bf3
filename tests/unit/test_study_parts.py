"""The study's pure parts: method names, the dev/test split, equal tuning tries, budget-matched controls, the
routing of settings to recipes, and the verdict in words."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rewardsft.config import load_config
from rewardsft.data import Example, load_examples
from rewardsft.errors import ConfigError
from rewardsft.studies.plan import (
    Budget,
    Trial,
    budget_of,
    control_spec,
    matched_control,
    parse_method,
    parse_methods,
    rft_overrides,
    sft_budget,
    tuning_trials,
)
from rewardsft.studies.runner import check_overrides, routed
from rewardsft.studies.split import DataSpec, canonical_row, example_key, make_split, prompt_key, split_by_prompt
from rewardsft.studies.verdict import plain_answer


def test_method_names_map_to_recipes_and_starts() -> None:
    assert parse_method("spin").overrides == ("irft.stages=1",)
    assert parse_method("irft-t4-from-sft").overrides == ("irft.stages=4",)
    assert parse_method("irft-t4-from-sft").from_sft and not parse_method("irft-t4").from_sft
    assert parse_method("rft-from-sft").method == "rft"
    assert [s.name for s in parse_methods(["spin", "sft", "spin"])] == ["sft", "spin"]
    for bad in ("sft-from-sft", "irft-t0", "dpo", "irft"):
        with pytest.raises(ConfigError, match="unknown study method"):
            parse_method(bad)
    with pytest.raises(ConfigError, match="no reward-learning method"):
        parse_methods(["sft"])


def pairs_with_prompts(n_prompts: int, per_prompt: int) -> list[Example]:
    return [
        Example(f"prompt {p}", f"good {p}.{k}", f"bad {p}.{k}") for p in range(n_prompts) for k in range(per_prompt)
    ]


@pytest.mark.parametrize(("n_prompts", "per_prompt"), [(10, 1), (7, 3), (3, 5)])
def test_dev_and_test_never_share_a_prompt_or_a_pair(n_prompts: int, per_prompt: int) -> None:
    pairs = pairs_with_prompts(n_prompts, per_prompt)
    dev, test, unit = split_by_prompt(pairs, 0.5, seed=0)
    assert unit == "prompt"
    assert sorted(dev + test) == list(range(len(pairs))) and dev and test
    assert not {prompt_key(pairs[i].prompt) for i in dev} & {prompt_key(pairs[i].prompt) for i in test}


def test_one_prompt_splits_by_row_keeping_identical_rows_together() -> None:
    pairs = [Example("the prompt", f"good {k % 4}", f"bad {k % 4}") for k in range(12)]  # 4 distinct, 3 copies each
    dev, test, unit = split_by_prompt(pairs, 0.5, seed=3)
    assert unit == "row"
    assert not {example_key(pairs[i]) for i in dev} & {example_key(pairs[i]) for i in test}
    assert len(dev) == len(test) == 6


@pytest.mark.parametrize(
    "example",
    [
        Example("text prompt", "yes", "no"),
        Example([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "yes", "no"),
        Example("\n\nHuman: hi\n\nAssistant:", " hello", " go away"),
        Example([{"role": "user", "content": "q"}], "a demonstration"),
        Example("plain", "a demonstration"),
    ],
)
def test_canonical_rows_parse_back_to_the_same_example(tmp_path: Path, example: Example) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(canonical_row(example)) + "\n")
    fmt = "chosen_rejected" if example.rejected is not None else "auto"
    assert load_examples(str(path), "train", fmt)[0] == [example]


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_split_files_are_disjoint_and_a_rerun_on_other_data_is_refused(tmp_path: Path) -> None:
    demos = write(tmp_path / "demos.jsonl", [{"prompt": f"d{i}", "completion": "x"} for i in range(6)])
    rows = [canonical_row(p) for p in pairs_with_prompts(8, 2)]
    pairs = write(tmp_path / "pairs.jsonl", rows)
    split = make_split(DataSpec(demos, pairs), tmp_path / "study" / "split")
    dev, _ = load_examples(split.file("dev"), "train", "chosen_rejected")
    test, _ = load_examples(split.file("test"), "train", "chosen_rejected")
    assert len(dev) + len(test) == 16 and split.counts == {"train": 6, "dev": len(dev), "test": len(test)}
    assert not {prompt_key(e.prompt) for e in dev} & {prompt_key(e.prompt) for e in test}
    assert make_split(DataSpec(demos, pairs), tmp_path / "study" / "split") == split  # read back
    write(tmp_path / "pairs.jsonl", rows[:-1])
    with pytest.raises(ConfigError, match="holds a study of other data"):
        make_split(DataSpec(demos, pairs), tmp_path / "study" / "split")


def test_without_pairs_demonstrations_are_held_out_by_prompt(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i // 2}", "completion": f"a{i}"} for i in range(40)]  # 20 prompts, 2 answers each
    split = make_split(DataSpec(write(tmp_path / "d.jsonl", rows)), tmp_path / "split")
    parts = [load_examples(p, "train")[0] for p in (split.file("train"), split.file("dev"), split.file("test"))]
    prompts = [{prompt_key(e.prompt) for e in part} for part in parts]
    assert split.kind == "demonstrations" and sum(map(len, parts)) == 40
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    assert len(parts[1]) + len(parts[2]) == 8  # 20% held out, whole prompts


def test_too_few_pairs_is_an_error_naming_the_file(tmp_path: Path) -> None:
    demos = write(tmp_path / "demos.jsonl", [{"prompt": "p", "completion": "x"}])
    pairs = write(tmp_path / "pairs.jsonl", [canonical_row(p) for p in pairs_with_prompts(3, 1)])
    with pytest.raises(ConfigError, match=r"pairs\.jsonl: 3 pairs"):
        make_split(DataSpec(demos, pairs), tmp_path / "split")


def test_every_method_of_an_arm_gets_the_same_tries() -> None:
    specs = parse_methods(["spin", "irft-t4", "rft", "spin-from-sft", "irft-t2-from-sft"])
    lrs, passes = (1e-6, 1e-5, 1e-4), (1, 2)
    counts = {s.name: len(tuning_trials(s, lrs, passes, budget=1)) for s in specs}
    assert {counts[n] for n in ("sft", "spin", "irft-t4", "rft")} == {6}
    assert {counts[n] for n in ("spin-from-sft", "irft-t2-from-sft")} == {3}
    shape = matched_control(Budget(64, 8), 64, 8)
    assert len(tuning_trials(control_spec(specs[-1], shape), lrs, passes, budget=1)) == 3
    assert all(t.seed == 0 for s in specs for t in tuning_trials(s, lrs, passes, 1))


def config_for(method: str, *overrides: str) -> Any:
    return load_config(method, overrides=["model.name_or_path=m", "data.path=d.jsonl", *overrides])


@pytest.mark.parametrize(
    ("n", "batch", "method", "extra"),
    [
        (64, 8, "irft", ("irft.stages=1",)),
        (64, 8, "irft", ("irft.stages=4",)),
        (50, 8, "irft", ("irft.stages=4",)),  # uneven chunks: more steps than one SFT epoch at batch 8
        (37, 4, "irft", ("irft.stages=2", "train.epochs=2")),
        (64, 8, "rft", rft_overrides(64, 8, 1)),
        (50, 8, "rft", rft_overrides(50, 8, 2)),
    ],
)
def test_the_control_spends_exactly_the_budget_of_the_method_it_controls(
    n: int, batch: int, method: str, extra: tuple[str, ...]
) -> None:
    target = budget_of(config_for(method, f"train.batch_size={batch}", *extra), n)
    shape = matched_control(target, n, batch)
    control = control_spec(parse_method("spin-from-sft"), shape)
    assert shape.exact, (target, shape)
    assert budget_of(config_for("sft", *control.overrides), n) == target


def test_a_control_that_cannot_match_exactly_is_the_closest_and_says_so() -> None:
    target = budget_of(config_for("rft", *rft_overrides(37, 8, 1)), 37)  # 37 is prime: rounds of 8, 40 seen
    shape = matched_control(target, 37, 8)
    assert target == Budget(40, 5) and not shape.exact
    assert shape.budget.steps == 5 and abs(shape.budget.demonstrations - 40) == min(
        abs(sft_budget(37, b, 1, 1, 5).demonstrations - 40) for b in range(1, 38)
    )


def test_budgets_count_what_the_recipes_plan() -> None:
    assert sft_budget(10, 4, 1, 1, None) == Budget(10, 3)  # 4 + 4 + 2
    assert sft_budget(10, 4, 1, 2, None) == Budget(20, 6)
    assert sft_budget(10, 4, 1, 1, 5) == Budget(18, 5)  # 4+4+2, then 4+4 of the next epoch
    assert budget_of(config_for("irft", "irft.stages=4", "train.batch_size=8"), 50) == Budget(50, 8)  # 12/13 a chunk
    assert rft_overrides(50, 8, 1) == ("rft.iterations=5", "rft.prompts_per_iteration=10")
    assert budget_of(config_for("rft", *rft_overrides(50, 8, 1)), 50) == Budget(50, 5)
    assert budget_of(config_for("sft", "data.max_rows=16", "train.batch_size=4"), 50) == Budget(16, 4)


def test_settings_reach_the_recipes_that_read_them() -> None:
    pairs = ["generation.max_new_tokens=8", "irft.beta=0.5", "train.batch_size=4", "rft.kl_coef=0.1"]
    assert routed(pairs, "sft") == ["train.batch_size=4"]
    assert routed(pairs, "irft") == ["generation.max_new_tokens=8", "irft.beta=0.5", "train.batch_size=4"]
    assert routed(pairs, "rft") == ["generation.max_new_tokens=8", "train.batch_size=4", "rft.kl_coef=0.1"]
    check_overrides(pairs, ["sft", "irft", "rft"])
    with pytest.raises(ConfigError, match=r"optim\.lr is set by the study.*--lrs"):
        check_overrides(["optim.lr=1e-5"], ["sft", "irft"])
    with pytest.raises(ConfigError, match=r"irft\.stages.*method's name"):
        check_overrides(["irft.stages=2"], ["sft", "irft"])
    with pytest.raises(ConfigError, match=r"rft\.kl_coef is read by no method"):
        check_overrides(["rft.kl_coef=0.1"], ["sft", "irft"])


def fake_study(verdicts: dict[str, tuple[str, str | None]], seeds: int = 3) -> tuple[Any, dict[str, Any]]:
    """A stand-in study with the given (vs tuned SFT, vs control) verdicts of the gap per method."""
    specs = [parse_method("sft")] + [parse_method(name) for name in verdicts]
    controls = [control_spec(s, matched_control(Budget(8, 2), 8, 4)) for s in specs if s.from_sft][:1]
    chosen = {s.name: Trial(s, 1e-5, 1, 0) for s in [*specs, *controls]}
    study = SimpleNamespace(
        specs=[*specs, *controls],
        chosen=chosen,
        settings=SimpleNamespace(seeds=seeds, lrs=(1e-6, 1e-5, 1e-4)),
        split=SimpleNamespace(kind="pairs"),
    )

    def row(group: str, verdict: str, mean: float) -> dict[str, Any]:
        return {
            "group": group,
            "metric": "gap",
            "mean": mean,
            "ci95": [mean - 1, mean + 1],
            "verdict": verdict,
            "verdict_text": verdict,
        }

    means = {"better": 3.0, "worse": -3.0, "not resolved": 0.5}
    found: dict[str, Any] = {"vs_sft": [], "vs_control": [], "winrate": []}
    for name, (vs_sft, vs_control) in verdicts.items():
        found["vs_sft"].append(row(name, vs_sft, means[vs_sft]))
        if vs_control is not None:
            found["vs_control"].append(row(name, vs_control, means[vs_control]))
    return study, found


def test_a_from_sft_method_wins_only_if_it_also_beats_its_control() -> None:
    study, found = fake_study({"spin-from-sft": ("better", "not resolved"), "irft-t4": ("not resolved", None)})
    assert plain_answer(study, found)[0].startswith("**No reward-learning method beat tuned SFT")
    study, found = fake_study({"spin-from-sft": ("better", "better"), "irft-t4": ("better", None)})
    first = plain_answer(study, found)[0]
    assert first.startswith("**Yes, on your test pairs: spin-from-sft**") and "SFT continued" in first


def test_few_seeds_and_edge_of_grid_are_said() -> None:
    study, found = fake_study({"spin": ("better", None)}, seeds=1)
    study.chosen["spin"] = Trial(parse_method("spin"), 1e-4, 1, 0)
    text = "\n".join(plain_answer(study, found))
    assert "rest on 1 seed" in text and "spin (largest, 0.0001)" in text


def test_a_run_stopped_and_resumed_costs_every_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rewardsft.studies import runner

    demos = write(tmp_path / "demos.jsonl", [{"prompt": f"d{i}", "completion": "x"} for i in range(6)])
    pairs = write(tmp_path / "pairs.jsonl", [canonical_row(p) for p in pairs_with_prompts(8, 1)])
    settings = runner.StudySettings(model="m", data=DataSpec(demos, pairs), out=tmp_path / "study")
    study = runner.Study(settings, make_split(settings.data, tmp_path / "study" / "split"), parse_methods(["spin"]), {})
    trial = Trial(study.specs[1], 1e-5, 1, 0)
    run = study.run_dir(trial)
    outcomes = iter([False, True])

    def fake_recipe(config: Any) -> Path:
        # The first launch is stopped half-way (SIGTERM: Preempted), the rerun resumes and finishes.
        assert config.resume == (run / "config.yaml").is_file()
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(config.to_yaml())
        if not next(outcomes):
            raise KeyboardInterrupt
        (run / "final").mkdir()
        return run / "final"

    clock = iter([100.0, 130.0, 200.0, 245.0])
    monkeypatch.setattr("rewardsft.recipes.run_recipe", fake_recipe)
    monkeypatch.setattr(runner.time, "time", lambda: next(clock))
    with pytest.raises(KeyboardInterrupt):
        study.train(trial)
    study.train(trial)
    record = json.loads((run / "wall_time.json").read_text())
    assert record["seconds"] == 75.0  # 130 - 100 for the stopped launch, 245 - 200 for the resumed one
    assert [x["resumed"] for x in record["launches"]] == [False, True]
    assert [x["finished"] for x in record["launches"]] == [False, True]


def test_uneven_prompt_groups_that_starve_a_part_are_refused(tmp_path: Path) -> None:
    demos = write(tmp_path / "demos.jsonl", [{"prompt": "d", "completion": "x"}])
    rows = [canonical_row(Example("A", f"good {k}", f"bad {k}")) for k in range(8)]
    rows += [canonical_row(Example("B", f"good {k}", f"bad {k}")) for k in range(2)]
    with pytest.raises(ConfigError, match=r"left .* for dev and .* for test; each needs at least 4"):
        make_split(DataSpec(demos, write(tmp_path / "pairs.jsonl", rows)), tmp_path / "split")


def test_held_out_demonstrations_of_one_prompt_are_split_by_row_and_said_so(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i // 50}", "completion": f"a{i}"} for i in range(100)]  # 2 prompts x 50
    split = make_split(DataSpec(write(tmp_path / "d.jsonl", rows)), tmp_path / "split")
    assert split.unit == "row" and split.counts["train"] == 50
    assert any("split row by row" in n for n in split.notes) and any("50 of 100" in n for n in split.notes)


def small_study(tmp_path: Path, methods: list[str], overrides: tuple[str, ...] = (), rows: int = 16) -> Any:
    from rewardsft.studies import runner

    tmp_path.mkdir(parents=True, exist_ok=True)
    demos = write(tmp_path / "demos.jsonl", [{"prompt": f"d{i}", "completion": "x"} for i in range(rows)])
    pairs = write(tmp_path / "pairs.jsonl", [canonical_row(p) for p in pairs_with_prompts(8, 1)])
    out = tmp_path / "study"
    settings = runner.StudySettings(model="m", data=DataSpec(demos, pairs), out=out, overrides=overrides)
    return runner.Study(settings, make_split(settings.data, out / "split"), parse_methods(methods), {}, list(overrides))


def test_methods_with_the_same_budget_share_one_control_and_each_is_compared_with_it(tmp_path: Path) -> None:
    from rewardsft.studies.runner import controls_of
    from rewardsft.studies.verdict import control_of

    study = small_study(tmp_path, ["spin-from-sft", "irft-t4-from-sft"], ("train.batch_size=4",))
    controls = controls_of(study, study.specs)
    assert [c.controls for c in controls] == [("spin-from-sft", "irft-t4-from-sft")]
    study.specs = [*study.specs, *controls]
    assert control_of(study, "spin-from-sft") is control_of(study, "irft-t4-from-sft") is controls[0]


def test_the_control_matches_a_method_that_accumulates_gradients(tmp_path: Path) -> None:
    from rewardsft.studies.runner import controls_of

    study = small_study(tmp_path, ["spin-from-sft"], ("train.batch_size=4", "train.grad_accum=2"))
    (control,) = controls_of(study, study.specs)
    spin = Trial(replace_spec(study.specs[1]), 1e-5, 1, 0)
    target = budget_of(study.config(spin), study.n_train)
    assert target == Budget(16, 2) and "train.grad_accum=1" in control.overrides
    assert budget_of(study.config(Trial(replace_spec(control), 1e-5, 1, 0)), study.n_train) == target


def replace_spec(spec: Any) -> Any:
    """The spec as if it started from the base (its config then needs no tuned SFT model)."""
    from dataclasses import replace

    return replace(spec, from_sft=False)


def test_an_interrupted_run_resumes_only_with_its_own_settings(tmp_path: Path) -> None:
    study = small_study(tmp_path, ["spin"])
    trial = Trial(study.specs[1], 1e-5, 1, 0)
    run = study.run_dir(trial)
    run.mkdir(parents=True)
    old = study.config(trial)
    old.irft.beta = 0.5  # the first launch ran with another beta
    (run / "config.yaml").write_text(old.to_yaml())
    with pytest.raises(ConfigError, match=r"was trained with irft\.beta=0\.5, but this study now sets 0\.1"):
        study.train(trial)


def test_a_moved_study_folder_is_still_the_same_study(tmp_path: Path) -> None:
    import shutil

    from rewardsft.studies.runner import check_same_settings

    study = small_study(tmp_path / "a", ["spin-from-sft"])
    study.chosen["sft"] = Trial(study.specs[0], 1e-5, 1, 0)
    trial = Trial(study.specs[1], 1e-5, 1, 0)
    run = study.run_dir(trial)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(study.config(trial).to_yaml())
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = small_study(tmp_path / "b", ["spin-from-sft"])
    moved.chosen["sft"] = study.chosen["sft"]
    check_same_settings(moved.run_dir(trial), moved.config(trial), moved.out)  # no error: only the root moved


def test_a_run_directly_under_its_folder_is_compared_against_that_folder(tmp_path: Path) -> None:
    """A benchmark's runs sit directly under its folder (benchmarks.rft_budget: OUT/NAME), not under runs/: its
    own paths inside that folder must compare equal (they once read as changed, so no such run could resume)."""
    from rewardsft.config import load_config
    from rewardsft.studies.runner import check_same_settings

    out = tmp_path / "budget"
    config = load_config("sft", overrides=[f"output_dir={out / 'run'}", f"data.eval_path={out / 'heldout.jsonl'}"])
    (out / "run").mkdir(parents=True)
    (out / "run" / "config.yaml").write_text(config.to_yaml())
    check_same_settings(out / "run", config, out)
    other = load_config("sft", overrides=[f"output_dir={out / 'run'}", f"data.eval_path={out / 'other.jsonl'}"])
    with pytest.raises(ConfigError, match=r"data\.eval_path"):
        check_same_settings(out / "run", other, out)


def test_an_evaluation_made_with_other_settings_is_redone(tmp_path: Path) -> None:
    from rewardsft.studies.runner import finished

    folder = tmp_path / "eval" / "test-likeness"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"settings": {"encoder": "minilm"}, "generation": {"a": 1}}))
    assert finished(folder, {"settings.encoder": "minilm", "generation": {"a": 1}})
    assert not finished(folder, {"settings.encoder": "other-encoder", "generation": {"a": 1}})
    assert not folder.exists()
    assert not finished(folder, {"settings.encoder": "minilm"})  # nothing there any more


def test_the_plan_counts_every_seed_of_every_method(tmp_path: Path) -> None:
    from dataclasses import replace

    from rewardsft.studies.runner import planned_trials

    study = small_study(tmp_path, ["spin", "irft-t4"])
    study.settings = replace(study.settings, seeds=3, lrs=(1e-6, 1e-5, 1e-4))
    trials = planned_trials(study)
    assert len(trials) == 3 * 3 + 3 * 2  # three tries and two further seeds of each of sft, spin, irft-t4
    assert {t.spec.name for t in trials if t.seed == 2} == {"sft", "spin", "irft-t4"}


def tries_of(*rows: tuple[float, float]) -> list[dict[str, float]]:
    return [{"dev_gap": gap, "dev_chosen_logp": logp} for gap, logp in rows]


def test_the_choice_is_the_best_gap_among_tries_that_keep_the_base_likelihood() -> None:
    from rewardsft.studies.runner import choose

    # Tweets' SPIN tries (dev gap, dev chosen log-lik.; base -98.7): the 1e-3 try's gap is the largest, but its
    # preferred texts are 5x less likely than under the base, and so is the 1e-4 try's by 32 nats.
    spin = tries_of((8.96, -89.9), (9.92, -96.7), (27.36, -130.6), (65.77, -528.5))
    assert choose(spin, -98.7) == (1, None)
    assert choose(spin, -600.0) == (3, None)  # with a floor every try keeps, the rule is the gap alone
    index, note = choose(spin, -50.0)  # no try keeps it: the best gap, and a note that says so
    assert index == 3 and note is not None and "-50.0" in note
    nan = float("nan")
    assert choose(tries_of((nan, -10.0), (1.0, -200.0), (0.5, -20.0)), -100.0) == (2, None)  # NaN never chosen
    assert choose(tries_of((5.0, nan), (1.0, -20.0)), -100.0) == (1, None)  # nor an unmeasured likelihood
    index, note = choose(tries_of((nan, -1.0), (nan, -1.0)), -100.0)
    assert index == 0 and note is not None and "diverged" in note
