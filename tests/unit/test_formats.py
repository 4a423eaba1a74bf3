import json
from pathlib import Path

import pytest

from rewardsft.data import DataError, Example, load_examples
from rewardsft.data.formats import detect_format, parse_rows
from tests.conftest import write_jsonl

USER = {"role": "user", "content": "Hi?"}
ASSISTANT = {"role": "assistant", "content": "Hello."}


def test_prompt_completion_text_stays_raw() -> None:
    [ex] = parse_rows([{"prompt": "Q: 2+2?\nA:", "completion": " 4"}], "x")
    assert ex == Example("Q: 2+2?\nA:", " 4")


def test_prompt_completion_messages() -> None:
    [ex] = parse_rows([{"prompt": [USER], "completion": [ASSISTANT]}], "x")
    assert ex == Example([USER], "Hello.")
    [ex] = parse_rows([{"prompt": "Hi?", "completion": [ASSISTANT]}], "x")
    assert ex == Example([USER], "Hello.")


def test_messages_last_assistant_turn_is_the_demonstration() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        USER,
        ASSISTANT,
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "No."},
    ]
    [ex] = parse_rows([{"messages": messages, "prompt_id": "p"}], "x")
    assert ex.prompt == messages[:4] and ex.response == "No."


def test_hh_rlhf_dialogue_split_at_last_assistant() -> None:
    chosen = "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Joke?\n\nAssistant: Knock knock."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Joke?\n\nAssistant: No."
    [ex] = parse_rows([{"chosen": chosen, "rejected": rejected}], "x")
    assert ex.prompt == "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Joke?\n\nAssistant:"
    assert ex.response == " Knock knock." and ex.rejected == " No."


def test_ultrafeedback_style_chosen_rejected_messages() -> None:
    row = {"prompt": "Hi?", "chosen": [USER, ASSISTANT], "rejected": [USER, {"role": "assistant", "content": "Go."}]}
    [ex] = parse_rows([row], "x")
    assert ex == Example([USER], "Hello.", "Go.")


def test_explicit_prompt_chosen_rejected() -> None:
    row = {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [{"role": "assistant", "content": "Go."}]}
    assert parse_rows([row], "x")[0] == Example([USER], "Hello.", "Go.")


def test_spin_real_generated() -> None:
    row = {"real": [USER, ASSISTANT], "generated": [USER, {"role": "assistant", "content": "Hmm."}]}
    assert detect_format(row) == "spin"
    assert parse_rows([row], "x")[0] == Example([USER], "Hello.", "Hmm.")


def test_forced_format_overrides_detection() -> None:
    row = {"prompt": "P", "completion": "C", "messages": [USER, ASSISTANT]}
    assert parse_rows([row], "x")[0].response == "Hello."
    assert parse_rows([row], "x", fmt="prompt_completion")[0].response == "C"


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"prompt": "P"}, None, "cannot tell the data format"),
        ({"prompt": "P", "completion": 3}, "completion", "expected text, got int"),
        ({"prompt": "P", "completion": "   "}, "completion", "empty"),
        ({"prompt": None, "completion": "C"}, "prompt", "missing"),
        ({"messages": [USER]}, "messages", "no assistant turn"),
        ({"messages": [{"role": "robot", "content": "x"}, ASSISTANT]}, "messages", "unknown role 'robot'"),
        ({"messages": [USER, {"role": "assistant"}]}, "messages", "must have 'role' and 'content'"),
        ({"messages": [USER, {"role": "assistant", "content": ""}]}, "messages", "empty"),
        ({"chosen": "no turns here", "rejected": "x"}, "chosen", "Assistant"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path: Path, row: dict, field: str | None, problem: str) -> None:
    good = {"prompt": "P", "completion": "C"} if "prompt" in row or "completion" in row else None
    rows = [good, row] if good and field else [row]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_examples(str(path), "train")
    message = str(info.value)
    assert str(path) in message and problem in message
    if field:
        assert f"row {len(rows)}" in message and f"field {field!r}" in message


def test_malformed_jsonl_line_is_reported_by_number(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "P", "completion": "C"}, '{"prompt": "P", "compl'])
    with pytest.raises(DataError, match=r"bad\.jsonl: row 2: malformed JSON"):
        load_examples(str(path), "train")


def test_json_parquet_and_directory_sources(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"P{i}", "completion": f"C{i}"} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps({"data": rows}))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    folder = tmp_path / "dir"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows[:1])
    assert len(load_examples(str(tmp_path / "a.json"), "train")[0]) == 3
    assert load_examples(str(tmp_path / "b.parquet"), "train")[0][2] == Example("P2", "C2")
    assert len(load_examples(str(folder), "test")[0]) == 1
    assert len(load_examples(str(folder), "train")[0]) == 3


def test_missing_local_file_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_examples("./nope.jsonl", "train")


def test_invalid_utf8_is_exit_2_naming_file_and_line(
    tmp_path: Path, llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rewardsft.cli import main

    good = json.dumps({"prompt": "P", "completion": "C"}).encode()
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + good + b"\n" + good.replace(b"C", b"caf\xe9") + b"\n")
    with pytest.raises(DataError, match=r"latin1\.jsonl: row 3: not valid UTF-8 \(byte 0xe9"):
        load_examples(str(path), "train")
    as_json = tmp_path / "latin1.json"
    as_json.write_bytes(b'[\n {"prompt": "P", "completion": "C"},\n {"prompt": "P", "completion": "caf\xe9"}\n]')
    with pytest.raises(DataError, match=r"latin1\.json: line 3: not valid UTF-8"):
        load_examples(str(as_json), "train")
    out = tmp_path / "run"
    args = ["train", "sft", f"model.name_or_path={llama_dir}", f"data.path={path}", f"output_dir={out}"]
    assert main(args) == 2
    assert "latin1.jsonl: row 3: not valid UTF-8" in capsys.readouterr().err
    assert not out.exists()  # nothing written for bad input


def test_parse_each_row_keeps_the_good_rows_and_names_every_bad_one() -> None:
    from rewardsft.data.formats import parse_each_row

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c"}, [1], {"prompt": "d", "completion": "e"}]
    parsed, rejected = parse_each_row(rows, "demos.jsonl")  # type: ignore[arg-type]
    assert [line for line, _ in parsed] == [1, 4] and parsed[1][1].response == "e"
    assert [line for line, _ in rejected] == [2, 3]
    assert rejected[0][1] == "demos.jsonl: row 2, field 'completion': missing"
    assert "row 3: expected a JSON object" in rejected[1][1]
