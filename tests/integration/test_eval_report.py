"""Two tiny runs, evaluated three ways, compared in a report (offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rewardsft.cli import main
from rewardsft.data.builtin import builtin_rows
from tests.conftest import write_jsonl

TRAIN = [
    "train.batch_size=8",
    "data.max_length=64",
    "data.max_prompt_length=32",
    "logging.progress=false",
    "optim.warmup_ratio=0",
    "train.save_every=1000",
]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Preference pairs from the built-in task: the right answer vs the same words in reverse order."""
    rows = builtin_rows()
    answers = [r["messages"][1]["content"] for r in rows]  # type: ignore[index]
    pairs = [
        {
            "prompt": [r["messages"][0]],
            "chosen": [r["messages"][1]],  # type: ignore[index]
            "rejected": [{"role": "assistant", "content": " ".join(reversed(answers[i].split()))}],
        }
        for i, r in enumerate(rows)
    ]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", pairs)


def harness_task(folder: Path) -> Path:
    """A two-choice task on a local JSONL file, in lm-eval's YAML format."""
    folder.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(
        folder / "qa_choice.jsonl",
        [
            {"question": "What is the capital of France?", "choices": ["Paris", "Oslo"], "label": 0},
            {"question": "What is the opposite of hot?", "choices": ["big", "cold"], "label": 1},
            {"question": "What is one plus one?", "choices": ["two", "ten"], "label": 0},
        ],
    )
    (folder / "tiny_qa.yaml").write_text(
        "task: rewardsft_tiny_qa\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    return folder


def test_two_runs_evaluated_and_reported(
    llama_dir: Path, builtin_jsonl: Path, pairs_file: Path, tmp_path: Path
) -> None:
    runs = {"sft": tmp_path / "sft", "irft": tmp_path / "irft"}
    common = [f"model.name_or_path={llama_dir}", f"data.path={builtin_jsonl}", *TRAIN]
    assert main(["train", "sft", f"output_dir={runs['sft']}", "train.epochs=10", "optim.lr=3e-3", *common]) == 0
    assert (
        main(
            [
                "train",
                "irft",
                f"output_dir={runs['irft']}",
                f"model.name_or_path={runs['sft'] / 'final'}",
                "irft.stages=2",
                "optim.lr=1e-3",
                "generation.max_new_tokens=10",
                *[c for c in common if not c.startswith("model.")],
            ]
        )
        == 0
    )

    for name, run in runs.items():
        final = run / "final"
        assert (
            main(
                [
                    "eval",
                    "gap",
                    "--model",
                    str(final),
                    "--ref-model",
                    str(llama_dir),
                    "--data",
                    str(pairs_file),
                    "--out",
                    str(run / "eval" / "gap"),
                ]
            )
            == 0
        )
        gap = json.loads((run / "eval" / "gap" / "summary.json").read_text())
        assert gap["pairs"] == 48 and gap["kind"] == "logprob_gap"
        assert len((run / "eval" / "gap" / "per_example.csv").read_text().splitlines()) == 49
        if name == "sft":  # trained on the chosen side only, it separates chosen from rejected
            assert gap["accuracy"]["mean"] > 0.8 and gap["gap"]["ci95"][0] > 0
        assert (
            main(
                [
                    "eval",
                    "winrate",
                    "--model",
                    str(final),
                    "--baseline",
                    str(llama_dir),
                    "--prompts",
                    str(builtin_jsonl),
                    "--judge",
                    "tests.judge_fns:length",
                    "--n",
                    "12",
                    "--max-new-tokens",
                    "8",
                    "--out",
                    str(run / "eval" / "winrate"),
                ]
            )
            == 0
        )
        wins = json.loads((run / "eval" / "winrate" / "summary.json").read_text())
        records = [json.loads(x) for x in (run / "eval" / "winrate" / "generations.jsonl").read_text().splitlines()]
        assert wins["n"] == len(records) == 12
        # Every saved score is the judge's verdict on the saved answer, and the counts follow from them.
        assert all(r["model_score"] == len(r["model_response"]) for r in records)
        assert all(r["baseline_score"] == len(r["baseline_response"]) for r in records)
        verdicts = [
            (r["model_score"] > r["baseline_score"]) - (r["model_score"] < r["baseline_score"]) for r in records
        ]
        assert (wins["wins"], wins["ties"], wins["losses"]) == (
            verdicts.count(1),
            verdicts.count(0),
            verdicts.count(-1),
        )

    assert (
        main(
            [
                "eval",
                "harness",
                "--model",
                str(runs["sft"] / "final"),
                "--tasks",
                "rewardsft_tiny_qa",
                "--include-path",
                str(harness_task(tmp_path / "tasks")),
                "--batch-size",
                "2",
                "--out",
                str(runs["sft"] / "eval" / "harness"),
            ]
        )
        == 0
    )
    harness = json.loads((runs["sft"] / "eval" / "harness" / "summary.json").read_text())
    assert harness["tasks"]["rewardsft_tiny_qa"]["metric"] == "acc,none"
    assert 0.0 <= harness["average"] <= 1.0 and harness["lm_eval_version"]

    out = tmp_path / "report"
    assert main(["report", str(runs["sft"]), str(runs["irft"]), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "| sft | sft |" in markdown and "| irft | irft |" in markdown and "gap:" in markdown
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["curves-irft.png", "curves-sft.png", "eval-gap.png", "win-rates.png"]
    import matplotlib.image

    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|[^"'>]*\.(png|css|js)["'\s>])""", page)
    card = (runs["irft"] / "final" / "README.md").read_text()
    assert "IRFT" in card and "gap:" in card and "stages: 2" in card
