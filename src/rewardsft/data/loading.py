"""Read raw rows from a local file, a directory, or a hub dataset id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rewardsft.data.formats import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def load_rows(path: str, split: str = "train", max_rows: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """Return the rows and a human-readable source name used in error messages.

    Local JSONL is read line by line so a malformed line is reported by number; a directory is either a
    ``datasets.save_to_disk`` folder or holds data files (those whose name contains ``split`` are preferred).
    Anything that is not an existing path is treated as a hub dataset id.
    """
    local = Path(path).expanduser()
    if local.is_file():
        rows = _read_file(local)
        source = str(local)
    elif local.is_dir():
        rows, source = _read_dir(local, split)
    elif _looks_local(path):
        raise DataError(f"data file {path} does not exist")
    else:
        rows, source = _read_hub(path, split), f"{path}[{split}]"
    return (rows[:max_rows] if max_rows is not None else rows), source


def _looks_local(path: str) -> bool:
    return path.endswith(LOCAL_SUFFIXES) or path.startswith((".", "/", "~"))


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        return _read_json(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, f"row {number}")
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: row {number}: malformed JSON ({err.msg} at column {err.colno})") from None
    return rows


def _decode(raw: bytes, path: Path, where: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped), or a DataError naming the file, the place and the byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: {where}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
            "save the file as UTF-8"
        ) from None


def _read_json(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        _decode(raw.splitlines()[line - 1], path, f"line {line}")
    try:
        loaded = json.loads(_decode(raw, path, "file"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(loaded, dict):
        # {"data": [...]} or {"train": [...], "test": [...]}: take the only list, or the one named like a split.
        lists = {k: v for k, v in loaded.items() if isinstance(v, list)}
        if len(lists) == 1:
            loaded = next(iter(lists.values()))
    if not isinstance(loaded, list):
        raise DataError(f"{path}: expected a JSON list of rows (or JSONL, one object per line)")
    return loaded


def _read_dir(path: Path, split: str) -> tuple[list[dict[str, Any]], str]:
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        table = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return table.to_list(), f"{path}[{split}]"
    files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES)
    matching = [p for p in files if split in p.stem] or files
    if not matching:
        raise DataError(f"{path}: no .jsonl/.json/.parquet files in the directory")
    rows: list[dict[str, Any]] = []
    for file in matching:
        rows.extend(_read_file(file))
    source = str(matching[0]) if len(matching) == 1 else f"{path} ({len(matching)} files)"
    return rows, source


def _read_hub(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        return datasets.load_dataset(name, split=split).to_list()  # type: ignore[no-any-return]
    except Exception as err:  # the hub raises many types; all mean "could not load"
        raise DataError(f"could not load dataset {name!r} split {split!r}: {err}") from None
