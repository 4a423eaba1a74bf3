"""``rewardsft config show``: a config as YAML with each key's docstring as a comment above it."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import typing
from typing import Any

import yaml

from rewardsft.config import schema
from rewardsft.config.schema import RunConfig


@functools.cache
def field_docs() -> dict[str, dict[str, str]]:
    """Field docstrings of this module's dataclasses, ``{class name: {field: docstring}}``, from its source.

    A string literal right after an annotated field documents it; Python keeps no such docstrings at runtime, so
    they are parsed (once) with :mod:`ast`. Empty when the source is unavailable. Treat the result as read-only.
    """
    try:
        source = inspect.getsource(schema)
    except (OSError, TypeError):
        return {}
    docs: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, str] = {}
        for stmt, after in zip(node.body, node.body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                fields[stmt.target.id] = inspect.cleandoc(after.value.value)
        docs[node.name] = fields
    return docs


def field_doc(cls: type, name: str) -> str:
    """The docstring of field ``name`` of ``cls``, from the class that declares it (a method's type inherits the
    shared sections' fields)."""
    owners = (owner.__name__ for owner in cls.__mro__)
    return next((doc for owner in owners if (doc := field_docs().get(owner, {}).get(name, "")).strip()), "")


COMMENT_WIDTH = 110
"""Comment lines of ``to_commented_yaml`` are wrapped to about this many characters."""


def _comment(doc: str, width: int) -> list[str]:
    """The docstring's first sentence, whitespace collapsed and ``code`` marks made single backticks, wrapped to
    lines of about ``width`` characters."""
    text = " ".join(doc.split()).replace("``", "`")
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z`])", text, maxsplit=1)[0]
    return textwrap.wrap(sentence, max(width, 40), break_long_words=False, break_on_hyphens=False)


def to_commented_yaml(config: RunConfig) -> str:
    """The mapping of ``config.to_yaml()`` with each key's docstring (first sentence) as a comment above it.

    ``yaml.safe_load`` of the result is exactly ``config.to_dict()``; ``rewardsft config show`` prints it.
    """
    lines: list[str] = []
    _commented_section(type(config), config.to_dict(), 0, lines)
    return "\n".join(lines) + "\n"


def _commented_section(cls: type, values: dict[str, Any], depth: int, lines: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    indent = "  " * depth
    for f in dataclasses.fields(cls):
        value, hint = values[f.name], hints[f.name]
        section = dataclasses.is_dataclass(hint)
        if section and lines:
            lines.append("")  # a blank line before each section
        lines.extend(f"{indent}# {line}" for line in _comment(field_doc(cls, f.name), COMMENT_WIDTH - len(indent) - 2))
        if section:
            lines.append(f"{indent}{f.name}:")
            _commented_section(hint, value, depth + 1, lines)
            continue
        # Dumping the one-key mapping quotes strings as needed (':', '#', 'yes', ...) and writes null for None;
        # lists go in flow style ([a, b]); the huge width stops long strings being folded.
        dumped = yaml.safe_dump(
            {f.name: value},
            sort_keys=False,
            default_flow_style=None if isinstance(value, list) else False,
            allow_unicode=True,
            width=1 << 30,
        )
        lines.extend(f"{indent}{line}" for line in dumped.splitlines())
