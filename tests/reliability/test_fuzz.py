"""Fuzzing the data and config loaders with hypothesis: every input either loads or raises ConfigError with a
message naming the file and row (data) or the key (config). Never another exception, never a traceback.

Case counts per run are set by the profiles below (``HYPOTHESIS_PROFILE=long`` for the long run);
docs/reliability.md records them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewardsft.cli import main
from rewardsft.config import load_config
from rewardsft.data import load_examples
from rewardsft.errors import ConfigError

settings.register_profile("fast", max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

ROLES = st.sampled_from(["user", "assistant", "system", "tool", "bot", "", "USER", None, 3])
TEXT = st.one_of(st.text(max_size=30), st.just(""), st.just("x" * 20000), st.integers(), st.none(), st.floats())
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLES, "content": TEXT}),
    st.fixed_dictionaries({"role": ROLES}),
    st.dictionaries(st.text(max_size=8), TEXT, max_size=3),
    TEXT,
)
MESSAGES = st.lists(MESSAGE, max_size=5)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
FIELDS = ["prompt", "completion", "messages", "chosen", "rejected", "real", "generated", "text"]
ROW = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(TEXT, MESSAGES, JSONISH), max_size=4),
    st.fixed_dictionaries({"prompt": TEXT, "completion": TEXT}),
    st.fixed_dictionaries({"messages": MESSAGES}),
    st.fixed_dictionaries({"chosen": st.one_of(MESSAGES, TEXT), "rejected": st.one_of(MESSAGES, TEXT)}),
    JSONISH,
)
LINE = st.one_of(
    ROW.map(lambda row: json.dumps(row).encode()),
    st.binary(max_size=40),  # malformed JSON, invalid UTF-8
    st.just(b'{"prompt": "a", "completion": "b"'),  # truncated line
    st.just(b"\xef\xbb\xbf" + json.dumps({"prompt": "p", "completion": "c"}).encode()),  # BOM
    st.just(b""),
)


def check_error(err: ConfigError, path: Path) -> None:
    message = str(err)
    assert str(path) in message, message
    assert message.strip() and "Traceback" not in message


@given(lines=st.lists(LINE, min_size=0, max_size=6), fmt=st.sampled_from(["auto", "prompt_completion", "messages"]))
def test_jsonl_demonstrations_load_or_fail_naming_file_and_row(
    tmp_path_factory: Any, lines: list[bytes], fmt: str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        examples, _ = load_examples(str(path), "train", fmt)
    except ConfigError as err:
        check_error(err, path)
        return
    for example in examples:
        assert isinstance(example.response, str)
        assert isinstance(example.prompt, str) or all(isinstance(m["content"], str) for m in example.prompt)


@given(rows=st.lists(ROW, max_size=4))
def test_json_files_and_preference_pairs_load_or_fail_naming_the_file(tmp_path_factory: Any, rows: list[Any]) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "data.json"
    path.write_text(json.dumps(rows))
    for load in (
        lambda: load_examples(str(path), "train"),
        lambda: load_examples(str(path), "train", "chosen_rejected"),
    ):
        try:
            load()
        except ConfigError as err:
            check_error(err, path)


@pytest.mark.parametrize(
    "table",
    [
        {"prompt": [1, 2], "completion": ["a", "b"]},
        {"prompt": ["a", None], "completion": ["a", "b"]},
        {"messages": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "no answer"}]]},
        {"chosen": [3.5], "rejected": [True]},
        {"unrelated": ["x"]},
    ],
)
def test_parquet_with_wrong_column_types_fails_naming_file_and_row(tmp_path: Path, table: dict[str, list[Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table(table), path)
    with pytest.raises(ConfigError) as err:
        load_examples(str(path), "train")
    check_error(err.value, path)


KEYS = [
    "optim.lr", "optim.name", "train.batch_size", "train.epochs", "train.max_steps", "train.grad_accum",
    "train.save_every", "data.max_length", "data.max_prompt_length", "generation.max_new_tokens",
    "generation.temperature", "irft.stages", "irft.beta", "irft.loss", "lora.enabled", "lora.r", "rft.iterations",
    "model.dtype", "seed", "output_dir", "nonsense", "train.nonsense", "optim", "irft.epochs_per_stage",
]  # fmt: skip
VALUE = st.one_of(
    st.integers(min_value=-5, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@given(
    method=st.sampled_from(["sft", "irft", "rft"]),
    overrides=st.dictionaries(st.sampled_from(KEYS), VALUE, max_size=4),
)
def test_config_loads_or_fails_naming_a_key(method: str, overrides: dict[str, Any]) -> None:
    try:
        config = load_config(method, overrides=overrides)
    except ConfigError as err:
        message = str(err)
        named = {part for key in overrides for part in (key, *key.split("."))}
        assert any(name in message for name in named) or "data.path" in message, message
        return
    assert config.train.batch_size >= 1 and config.optim.lr > 0 and config.data.max_length > 0


@given(strings=st.lists(st.text(alphabet="abcdeio.=_-0123 ", max_size=12), max_size=3))
def test_config_show_exits_0_or_2_on_any_override_strings(strings: list[str], capsys: Any) -> None:
    code = main(["config", "show", "sft", *[s for s in strings if not s.startswith("-")]])
    assert code in (0, 2)
    assert "Traceback" not in capsys.readouterr().err
