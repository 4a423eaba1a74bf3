"""Prompt rendering, tokenisation, masking and truncation: the ONE place that decides token boundaries.

Training, generation and evaluation all call :func:`render_prompt_ids` / :func:`tokenize_example`, so the
prompt a model is trained on is exactly the prompt it generates from (the official code differs here:
SPIN issue #33).

Conventions:
- message-list prompts use the tokenizer's chat template (or ``data.fallback_template``); text prompts are
  used verbatim (base models, HH-RLHF dialogues);
- the prompt starts with BOS iff the tokenizer adds one by itself and the rendered text does not already;
- the response ends with EOS exactly once (a chat template that closes the turn with the EOS token keeps it,
  whatever whitespace follows it is dropped);
- truncation keeps the END of the prompt (up to ``max_prompt_length`` tokens, BOS kept), then cuts the
  response to fit ``max_length``; a row with no response token left is skipped and counted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rewardsft.data.formats import Example, Prompt

MAX_LENGTH = 512
"""Default prompt + response tokens (the paper's 512), of training (``data.max_length``) and of evaluation."""
MAX_PROMPT_LENGTH = 128
"""Default prompt tokens kept, from the end of the prompt (the paper's 128)."""

IGNORE_INDEX = -100

# Role-tagged turns closed by EOS, in the style of zephyr's template; used only when the tokenizer has none.
DEFAULT_FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example; ``labels`` mask the prompt with ``IGNORE_INDEX``."""

    prompt_ids: list[int]
    response_ids: list[int]
    index: int = -1
    """Position of the example in its dataset (used to pair with generations)."""

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def labels(self) -> list[int]:
        return [IGNORE_INDEX] * len(self.prompt_ids) + self.response_ids


@dataclass
class TokenizeStats:
    rows: int = 0
    kept: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    skipped: int = 0
    skipped_rows: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.kept}/{self.rows} rows kept; prompt truncated in {self.prompt_truncated}, "
            f"response truncated in {self.response_truncated}, skipped {self.skipped} (no room for a response)"
        )


@dataclass(frozen=True)
class RenderSettings:
    """Everything that decides a model's prompt and response tokens (the ``data`` section's rendering keys, with
    the same defaults: a model that is not a run is evaluated as a default run would have trained)."""

    system_prompt: str | None = None
    fallback_template: str = "default"
    text_prompts: str = "verbatim"
    max_length: int = MAX_LENGTH
    max_prompt_length: int = MAX_PROMPT_LENGTH


class Renderer:
    """Renders prompts and responses to text with a tokenizer's chat template (or the fallback)."""

    def __init__(
        self,
        tokenizer: Any,
        fallback_template: str = "default",
        system_prompt: str | None = None,
        text_prompts: str = "verbatim",
    ):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.text_prompts = text_prompts
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.has_chat_template = has_template
        self.template: str | None = None
        if not has_template:
            self.template = DEFAULT_FALLBACK_TEMPLATE if fallback_template == "default" else fallback_template
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.bos_id: int | None = tokenizer.bos_token_id
        self.adds_bos = self.bos_id is not None and len(probe) > 0 and probe[0] == self.bos_id
        self.eos_token: str | None = tokenizer.eos_token
        self.eos_id: int | None = tokenizer.eos_token_id

    @functools.cached_property
    def turn_end_id(self) -> int | None:
        """The special token that closes an assistant turn in the chat template (e.g. ``<|im_end|>``), if any."""
        if not self.has_chat_template and self.template is None:
            return None
        text, _ = self.response_text([{"role": "user", "content": "hi"}], "ok")
        special = set(self.tokenizer.all_special_ids) | {
            i for i, token in getattr(self.tokenizer, "added_tokens_decoder", {}).items() if token.special
        }
        found = [t for t in self.tokenizer(text, add_special_tokens=False)["input_ids"] if t in special]
        return found[0] if found else None

    @functools.cached_property
    def stop_ids(self) -> list[int]:
        """Ids that end a response: EOS and the template's turn end."""
        return [t for t in dict.fromkeys([self.eos_id, self.turn_end_id]) if t is not None]

    @classmethod
    def from_settings(cls, tokenizer: Any, settings: RenderSettings) -> Renderer:
        return cls(tokenizer, settings.fallback_template, settings.system_prompt, settings.text_prompts)

    def as_chat(self, prompt: Prompt) -> Prompt:
        """A text prompt as one user turn when ``text_prompts=user_turn``; anything else unchanged."""
        if isinstance(prompt, str) and self.text_prompts == "user_turn":
            return [{"role": "user", "content": prompt}]
        return prompt

    def _messages(self, prompt: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.system_prompt and not (prompt and prompt[0]["role"] == "system"):
            return [{"role": "system", "content": self.system_prompt}, *prompt]
        return prompt

    def _chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=generation_prompt
        )
        return str(text)

    def prompt_text(self, prompt: Prompt) -> str:
        prompt = self.as_chat(prompt)
        if isinstance(prompt, str):
            return prompt
        return self._chat(self._messages(prompt), generation_prompt=True)

    def response_text(self, prompt: Prompt, response: str) -> tuple[str, bool]:
        """The response as it follows the rendered prompt, and whether it already ends with EOS."""
        prompt = self.as_chat(prompt)
        if isinstance(prompt, str):
            return response, False
        prompt_text = self.prompt_text(prompt)
        full = self._chat([*self._messages(prompt), {"role": "assistant", "content": response}], False)
        # Templates that render the history differently once a reply follows (e.g. thinking models) break
        # the prefix property; then the bare response is the best we can do, and EOS is appended below.
        if not full.startswith(prompt_text):
            return response, False
        text = full[len(prompt_text) :]
        if self.eos_token and text.rstrip().endswith(self.eos_token):
            return text.rstrip(), True
        return text, False


def tokenize_example(
    example: Example, renderer: Renderer, max_length: int, max_prompt_length: int, index: int = -1
) -> tuple[TokenizedExample | None, bool, bool]:
    """Tokenise one example; returns (example or None if skipped, prompt truncated, response truncated)."""
    prompt_ids = render_prompt_ids(example.prompt, renderer)
    prompt_ids, prompt_cut = truncate_prompt(prompt_ids, max_prompt_length, renderer)
    response_ids = response_token_ids(example.prompt, example.response, renderer)
    room = max_length - len(prompt_ids)
    response_cut = len(response_ids) > room
    response_ids = response_ids[: max(room, 0)]
    if not response_ids:
        return None, prompt_cut, response_cut
    return TokenizedExample(prompt_ids, response_ids, index), prompt_cut, response_cut


def render_prompt_ids(prompt: Prompt, renderer: Renderer) -> list[int]:
    """Prompt token ids, BOS included when the tokenizer uses one (untruncated)."""
    ids: list[int] = renderer.tokenizer(renderer.prompt_text(prompt), add_special_tokens=False)["input_ids"]
    if renderer.adds_bos and (not ids or ids[0] != renderer.bos_id):
        ids = [renderer.bos_id, *ids]  # type: ignore[list-item]
    return ids


def response_token_ids(prompt: Prompt, response: str, renderer: Renderer) -> list[int]:
    """The response's ids, ending at its first end-of-turn token (the template's turn end or EOS), else with EOS.

    Generation stops at the same ids (``generation.end_of_turn_ids``), so a demonstration and a generation end
    alike: whatever a template puts after the turn end (a newline, the tokenizer's EOS) is not part of either.
    """
    text, _ = renderer.response_text(prompt, response)
    ids: list[int] = renderer.tokenizer(text, add_special_tokens=False)["input_ids"]
    ends = [pos for pos, token in enumerate(ids) if token in renderer.stop_ids]
    if ends:
        return ids[: ends[0] + 1]
    return [*ids, renderer.eos_id] if renderer.eos_id is not None else ids


def truncate_prompt(ids: list[int], max_prompt_length: int, renderer: Renderer) -> tuple[list[int], bool]:
    """Keep the last ``max_prompt_length`` tokens (the question is usually at the end); keep BOS first."""
    if len(ids) <= max_prompt_length:
        return ids, False
    if renderer.adds_bos and ids and ids[0] == renderer.bos_id:
        return [ids[0], *ids[len(ids) - max_prompt_length + 1 :]], True
    return ids[len(ids) - max_prompt_length :], True


def verbatim_text_prompt_warning(examples: Sequence[Example], renderer: Renderer) -> str | None:
    """A warning when text prompts go verbatim to a model that has a chat template (usually a mistake)."""
    n_text = sum(isinstance(ex.prompt, str) for ex in examples)
    if not n_text or not renderer.has_chat_template or renderer.text_prompts != "verbatim":
        return None
    return (
        f"warning: {n_text} of {len(examples)} prompts are plain text and are used verbatim, although the "
        "tokenizer has a chat template; set data.text_prompts=user_turn to render each as a user turn"
    )


def tokenize_examples(
    examples: Sequence[Example], renderer: Renderer, max_length: int, max_prompt_length: int
) -> tuple[list[TokenizedExample], TokenizeStats]:
    stats = TokenizeStats(rows=len(examples))
    out = []
    for index, example in enumerate(examples):
        tokenized, prompt_cut, response_cut = tokenize_example(example, renderer, max_length, max_prompt_length, index)
        stats.prompt_truncated += prompt_cut
        stats.response_truncated += response_cut
        if tokenized is None:
            stats.skipped += 1
            stats.skipped_rows.append(index + 1)
        else:
            out.append(tokenized)
    stats.kept = len(out)
    return out, stats
