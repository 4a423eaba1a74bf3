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
