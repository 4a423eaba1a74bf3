"""The real-data study's data preparation: only the allowed subsets, disjoint splits, pairs of the right signs."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def study() -> Any:
    spec = importlib.util.spec_from_file_location("real_study", ROOT / "benchmarks" / "real_study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_study"] = module
    spec.loader.exec_module(module)
    return module


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_sdist(path: Path) -> Path:
    """The sdist's layout with synthetic snippets; the reserved subsets hold a marker that must never appear."""
    lines = {
        "tweets_GroundTruth.txt": [f"{i}\t{(i % 9) - 4:.1f}\ttweet {i}" for i in range(1, 200)],
        "amazonReviewSnippets_GroundTruth.txt": [f"1_{i}\t{(i % 9) - 4:.2f}\treview {i}" for i in range(1, 200)],
        "movieReviewSnippets_GroundTruth.txt": [f"{i}\t3.0\tRESERVED movie {i}" for i in range(1, 50)],
        "nytEditorialSnippets_GroundTruth.txt": [f"{i}\t3.0\tRESERVED nyt {i}" for i in range(1, 50)],
    }
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for name, rows in lines.items():
            add(tar, f"hutto_ICWSM_2014/{name}", ("\r\n".join(rows) + "\r\n").encode("latin-1"))
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return path


def test_prepare_writes_disjoint_splits_from_the_allowed_subsets_only(tmp_path: Path) -> None:
    module = study()
    out = tmp_path / "data"
    counts = module.prepare(out, fake_sdist(tmp_path / "sdist.tar.gz"), module.Sizes(demonstrations=20, pairs=10), 0)
    assert set(counts) == {"tweets", "amazon"}
    for domain in ("tweets", "amazon"):
        read = {
            name: [json.loads(x) for x in (out / domain / name).read_text().splitlines()] for name in counts[domain]
        }
        demos, pairs, judge = read["demonstrations.jsonl"], read["pairs.jsonl"], read["judge.jsonl"]
        assert (len(demos), len(pairs)) == (20, 10)
        ratings = {j["response"]: j["rating"] for j in judge}
        demo_texts = {d["completion"] for d in demos}
        pair_texts = {p["chosen"] for p in pairs} | {p["rejected"] for p in pairs}
        assert not demo_texts & pair_texts and not (demo_texts | pair_texts) & set(ratings)  # disjoint splits
        number = {int(t.split()[-1]): t for t in demo_texts | pair_texts}
        rating_of = {t: (n % 9) - 4 for n, t in number.items()}
        assert all(rating_of[t] >= 2 for t in demo_texts)
        assert all(rating_of[p["chosen"]] >= 2 and rating_of[p["rejected"]] <= -2 for p in pairs)
        assert "RESERVED" not in "".join((out / domain / name).read_text() for name in counts[domain])
    again = tmp_path / "again"
    module.prepare(again, tmp_path / "sdist.tar.gz", module.Sizes(demonstrations=20, pairs=10), 0)
    assert (again / "tweets" / "pairs.jsonl").read_text() == (out / "tweets" / "pairs.jsonl").read_text()


def test_malformed_line_names_file_and_line() -> None:
    with pytest.raises(ValueError, match=r"tweets_GroundTruth.txt: line 2: rating 'x' is not a number"):
        study().parse_ground_truth("1\t2.0\tok\n2\tx\tbad\n", "tweets_GroundTruth.txt")


def fake_chitchat(path: Path) -> Path:
    """Conversations over three prompts, rated high (9), low (3) or middling (6); one unrated, one unprompted."""
    conversations: dict[str, Any] = {}
    for i in range(90):
        rating = (9, 3, 6)[i % 3]
        turn = [{"text": f"my answer number {i} is"}, {"text": "this one"}]
        conversations[f"c{i:03d}"] = {
            "prompt": f"Question {(i // 3) % 3}?",
            "ratings": {"witty": rating, "upbeat": rating, "interesting": rating},
            "messages": [turn, [{"text": "a reply"}]],
        }
    conversations["unrated"] = {"prompt": "Question 0?", "messages": [[{"text": "no ratings given here"}]]}
    conversations["short"] = {"prompt": "Question 0?", "ratings": {"w": 9}, "messages": [[{"text": "hi"}]]}
    path.write_text(json.dumps(conversations))
    return path


def test_chitchat_pairs_share_a_prompt_and_never_reuse_a_demonstration(tmp_path: Path) -> None:
    from benchmarks.chitchat_data import prepare_chitchat

    counts = prepare_chitchat(tmp_path / "chitchat", 10, 8, seed=0, source=fake_chitchat(tmp_path / "d.json"))
    assert counts == {"demonstrations.jsonl": 10, "pairs.jsonl": 8, "judge.jsonl": 90 - 10 - 16}
    read = lambda name: [json.loads(x) for x in (tmp_path / "chitchat" / name).read_text().splitlines()]  # noqa: E731
    demos, pairs, judge = read("demonstrations.jsonl"), read("pairs.jsonl"), read("judge.jsonl")
    assert all(p["chosen"].startswith("my answer") and p["rejected"] != p["chosen"] for p in pairs)
    number = lambda text: int(text.split()[3])  # noqa: E731
    # chosen from conversations rated 9, rejected from 3, of the same prompt; demonstrations rated 9 and unused
    assert all(number(p["chosen"]) % 3 == 0 and number(p["rejected"]) % 3 == 1 for p in pairs)
    for p in pairs:
        assert (
            p["prompt"]
            == f"Question {(number(p['chosen']) // 3) % 3}?"
            == f"Question {(number(p['rejected']) // 3) % 3}?"
        )
    assert all(number(d["completion"]) % 3 == 0 for d in demos)
    assert not {d["completion"] for d in demos} & {p["chosen"] for p in pairs}
    texts = [j["response"] for j in judge]
    assert "no ratings given here" not in texts and "hi" not in texts
    assert {j["rating"] for j in judge} <= {9.0, 3.0, 6.0}
