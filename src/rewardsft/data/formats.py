"""Row formats -> one canonical :class:`Example`.

Supported (see PAPER.md, "Data formats"): ``prompt``/``completion`` (text or message lists), ``messages``
(the last assistant turn is the demonstration), ``chosen``/``rejected`` (message lists, text with a ``prompt``
column, or whole HH-RLHF ``\\n\\nHuman: ... \\n\\nAssistant: ...`` dialogues; chosen = demonstration) and SPIN's
``real``/``generated``. A text prompt is rendered as raw text (base models); a message-list prompt goes
through the chat template.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rewardsft.errors import ConfigError

Message = dict[str, str]
Prompt = str | list[Message]

ROLES = frozenset({"system", "user", "assistant", "tool"})
FORMATS = ("prompt_completion", "messages", "chosen_rejected", "spin")
HH_ASSISTANT = "\n\nAssistant:"


class DataError(ConfigError):
    """Bad input data; the message names the source, the row and the field."""


@dataclass(frozen=True)
class Example:
    """One demonstration: ``prompt`` (raw text or chat messages) and the demonstrated ``response``.

    ``rejected`` holds the other side of a preference pair (or SPIN's ``generated``) when the row has one.
    """

    prompt: Prompt
    response: str
    rejected: str | None = None


def detect_format(columns: Iterable[str], source: str = "data") -> str:
    """Pick the row format from the column names (first match wins)."""
    cols = set(columns)
    if {"real", "generated"} <= cols:
        return "spin"
    if {"chosen", "rejected"} <= cols:
        return "chosen_rejected"
    if "messages" in cols:
        return "messages"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    raise DataError(
        f"{source}: row 1: cannot tell the data format from the columns {sorted(cols)}; expected prompt+completion, messages, "
        "chosen+rejected or real+generated (or set data.format)"
    )


def parse_rows(rows: Sequence[dict[str, Any]], source: str, fmt: str = "auto") -> list[Example]:
    """Validate and convert every row; the first bad row raises :class:`DataError` naming it (1-based)."""
    parsed, rejected = parse_each_row(rows, source, fmt)
    if rejected:
        raise DataError(rejected[0][1])
    return [example for _, example in parsed]


def parse_each_row(
    rows: Sequence[dict[str, Any]], source: str, fmt: str = "auto"
) -> tuple[list[tuple[int, Example]], list[tuple[int, str]]]:
    """Every row that parses, with its 1-based row number, and every row that does not, with its error (the
    message :func:`parse_rows` would raise): for tools that report bad rows instead of stopping at the first."""
    if not rows:
        raise DataError(f"{source}: no rows")
    if fmt == "auto":
        first = next((row for row in rows if isinstance(row, dict)), None)
        if first is None:
            raise _Where(source, 1).error(None, f"expected a JSON object, got {type(rows[0]).__name__}")
        fmt = detect_format(first.keys(), source)
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    parsed, rejected = [], []
    for index, row in enumerate(rows, start=1):
        where = _Where(source, index)
        try:
            if not isinstance(row, dict):
                raise where.error(None, f"expected a JSON object, got {type(row).__name__}")
            parsed.append((index, _PARSERS[fmt](row, where)))
        except DataError as err:
            rejected.append((index, str(err)))
    return parsed, rejected


@dataclass(frozen=True)
class _Where:
    source: str
    row: int

    def error(self, field: str | None, problem: str) -> DataError:
        at = f"{self.source}: row {self.row}"
        return DataError(f"{at}, field {field!r}: {problem}" if field else f"{at}: {problem}")


def _field(row: dict[str, Any], name: str, where: _Where) -> Any:
    if name not in row or row[name] is None:
        raise where.error(name, "missing")
    return row[name]


def _text(value: Any, field: str, where: _Where, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise where.error(field, f"expected text, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise where.error(field, "empty")
    return value


def _messages(value: Any, field: str, where: _Where) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise where.error(field, "expected a non-empty list of {role, content} messages")
    out = []
    for turn, msg in enumerate(value, start=1):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise where.error(field, f"message {turn} must have 'role' and 'content'")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise where.error(field, f"message {turn} has unknown role {role!r} (expected {sorted(ROLES)})")
        out.append({"role": role, "content": _text(content, f"{field}[{turn}].content", where, True)})
    return out


def _split_last_assistant(messages: list[Message], field: str, where: _Where) -> tuple[list[Message], str]:
    """Earlier turns are the prompt; the last assistant turn is the response."""
    for pos in range(len(messages) - 1, -1, -1):
        if messages[pos]["role"] == "assistant":
            response = messages[pos]["content"]
            if not response.strip():
                raise where.error(field, "the last assistant turn is empty")
            return messages[:pos], response
    raise where.error(field, "conversation has no assistant turn")


def _parse_messages(row: dict[str, Any], where: _Where) -> Example:
    messages = _messages(_field(row, "messages", where), "messages", where)
    prompt, response = _split_last_assistant(messages, "messages", where)
    if not prompt:
        raise where.error("messages", "no turn before the last assistant turn to use as the prompt")
    return Example(prompt, response)


def _parse_prompt_completion(row: dict[str, Any], where: _Where) -> Example:
    raw_prompt, raw_completion = _field(row, "prompt", where), _field(row, "completion", where)
    if isinstance(raw_completion, list):
        completion_msgs = _messages(raw_completion, "completion", where)
        _, response = _split_last_assistant(completion_msgs, "completion", where)
    else:
        response = _text(raw_completion, "completion", where)
    if isinstance(raw_prompt, list):
        return Example(_messages(raw_prompt, "prompt", where), response)
    prompt_text = _text(raw_prompt, "prompt", where)
    # A text prompt with a message-list completion is a one-turn conversation.
    prompt: Prompt = [{"role": "user", "content": prompt_text}] if isinstance(raw_completion, list) else prompt_text
    return Example(prompt, response)


def _parse_chosen_rejected(row: dict[str, Any], where: _Where) -> Example:
    chosen, rejected = _field(row, "chosen", where), _field(row, "rejected", where)
    if isinstance(chosen, str):
        if "prompt" in row and row["prompt"] is not None:
            prompt_text = _text(row["prompt"], "prompt", where)
            return Example(prompt_text, _text(chosen, "chosen", where), _text(rejected, "rejected", where))
        return _parse_hh(chosen, rejected, where)
    chosen_prompt, chosen_resp = _chat_side(chosen, "chosen", row, where)
    rejected_prompt, rejected_resp = _chat_side(rejected, "rejected", row, where)
    if chosen_prompt != rejected_prompt:
        raise where.error("rejected", "its conversation before the last assistant turn differs from chosen's")
    return Example(chosen_prompt, chosen_resp, rejected_resp)


def _chat_side(value: Any, field: str, row: dict[str, Any], where: _Where) -> tuple[list[Message], str]:
    messages = _messages(value, field, where)
    prompt, response = _split_last_assistant(messages, field, where)
    if prompt:
        return prompt, response
    # Explicit-prompt style: chosen/rejected hold only the assistant turn(s), the prompt is its own column.
    raw_prompt = _field(row, "prompt", where)
    if isinstance(raw_prompt, str):
        return [{"role": "user", "content": _text(raw_prompt, "prompt", where)}], response
    return _messages(raw_prompt, "prompt", where), response


def _parse_hh(chosen: str, rejected: Any, where: _Where) -> Example:
    """HH-RLHF: the prompt is everything up to and including the last ``\\n\\nAssistant:``."""
    rejected = _text(rejected, "rejected", where)
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise where.error("chosen", f"no {HH_ASSISTANT.strip()!r} turn (expected an HH-RLHF dialogue)")
    prompt = chosen[: cut + len(HH_ASSISTANT)]
    if not rejected.startswith(prompt):
        raise where.error("rejected", "does not share chosen's dialogue up to the last 'Assistant:'")
    response = chosen[len(prompt) :]
    if not response.strip():
        raise where.error("chosen", "the last assistant turn is empty")
    return Example(prompt, response, rejected[len(prompt) :])


def _parse_spin(row: dict[str, Any], where: _Where) -> Example:
    real = _messages(_field(row, "real", where), "real", where)
    generated = _messages(_field(row, "generated", where), "generated", where)
    prompt, response = _split_last_assistant(real, "real", where)
    if not prompt:
        raise where.error("real", "no user turn before the assistant turn")
    _, gen_response = _split_last_assistant(generated, "generated", where)
    return Example(prompt, response, gen_response)


_PARSERS = {
    "prompt_completion": _parse_prompt_completion,
    "messages": _parse_messages,
    "chosen_rejected": _parse_chosen_rejected,
    "spin": _parse_spin,
}


def parse_prompts(rows: Sequence[dict[str, Any]], source: str) -> list[Prompt]:
    """Prompts only: a ``prompt`` column (text or messages), else the turns before the last assistant turn of
    ``messages``/``chosen`` (or all of ``messages`` when it has no assistant turn)."""
    if not rows:
        raise DataError(f"{source}: no rows")
    prompts: list[Prompt] = []
    for index, row in enumerate(rows, start=1):
        where = _Where(source, index)
        if not isinstance(row, dict):
            raise where.error(None, f"expected a JSON object, got {type(row).__name__}")
        if "prompt" in row and row["prompt"] is not None:
            raw = row["prompt"]
            prompts.append(_messages(raw, "prompt", where) if isinstance(raw, list) else _text(raw, "prompt", where))
        elif "messages" in row:
            messages = _messages(row["messages"], "messages", where)
            has_reply = any(m["role"] == "assistant" for m in messages)
            prompts.append(_split_last_assistant(messages, "messages", where)[0] if has_reply else messages)
        else:
            prompts.append(
                _parse_chosen_rejected(row, where).prompt if "chosen" in row else _field(row, "prompt", where)
            )
    return prompts
