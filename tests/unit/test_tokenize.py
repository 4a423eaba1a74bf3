from typing import Any

from rewardsft.data import IGNORE_INDEX, Example, Renderer, collate, collate_prompts, tokenize_examples
from rewardsft.data.tokenize import render_prompt_ids, tokenize_example

CHAT = Example([{"role": "user", "content": "What is the capital of France?"}], "The capital of France is Paris.")


def tokens(tok: Any, ids: list[int]) -> list[str]:
    return tok.convert_ids_to_tokens(ids)


def test_chat_prompt_masked_bos_once_eos_once(tokenizer: Any) -> None:
    renderer = Renderer(tokenizer)
    ex, _, _ = tokenize_example(CHAT, renderer, 128, 64)
    assert ex is not None
    assert ex.input_ids.count(tokenizer.bos_token_id) == 1 and ex.input_ids[0] == tokenizer.bos_token_id
    assert ex.response_ids.count(tokenizer.eos_token_id) == 1 and ex.response_ids[-1] == tokenizer.eos_token_id
    assert ex.labels[: len(ex.prompt_ids)] == [IGNORE_INDEX] * len(ex.prompt_ids)
    assert ex.labels[len(ex.prompt_ids) :] == ex.response_ids
    # The prompt is the chat template's generation prompt, so generation sees exactly the training prompt.
    assert tokenizer.decode(ex.prompt_ids, skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(ex.response_ids, skip_special_tokens=True) == CHAT.response
    assert render_prompt_ids(CHAT.prompt, renderer) == ex.prompt_ids


def test_template_that_writes_bos_itself_is_not_doubled(tokenizer: Any) -> None:
    template = "{{ bos_token }}" + tokenizer.chat_template
    renderer = Renderer(tokenizer, fallback_template="default")
    renderer.template = template
    ids = render_prompt_ids(CHAT.prompt, renderer)
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id


def test_raw_text_prompt_gets_eos_appended_and_no_bos_without_one(plain_tokenizer: Any) -> None:
    renderer = Renderer(plain_tokenizer)
    ex, _, _ = tokenize_example(Example("Q: hi\nA:", " hello"), renderer, 64, 32)
    assert ex is not None and not renderer.adds_bos
    assert plain_tokenizer.decode(ex.prompt_ids) == "Q: hi\nA:"
    assert ex.response_ids[-1] == plain_tokenizer.eos_token_id
    assert ex.response_ids.count(plain_tokenizer.eos_token_id) == 1
    assert plain_tokenizer.decode(ex.response_ids[:-1]) == " hello"


def test_fallback_template_for_tokenizers_without_one(plain_tokenizer: Any) -> None:
    renderer = Renderer(plain_tokenizer)
    text = renderer.prompt_text(CHAT.prompt)
    assert text == "<|user|>\nWhat is the capital of France?<|im_end|>\n<|assistant|>\n"
    response, has_eos = renderer.response_text(CHAT.prompt, CHAT.response)
    assert response == CHAT.response + "<|im_end|>" and has_eos
    custom = Renderer(plain_tokenizer, fallback_template="{% for m in messages %}{{ m['content'] }} {% endfor %}")
    assert custom.prompt_text(CHAT.prompt) == "What is the capital of France? "


def test_system_prompt_is_prepended(tokenizer: Any) -> None:
    renderer = Renderer(tokenizer, system_prompt="Be brief.")
    assert renderer.prompt_text(CHAT.prompt).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_truncation_keeps_prompt_end_and_bos_then_cuts_response(tokenizer: Any) -> None:
    renderer = Renderer(tokenizer)
    long = Example("word " * 50 + "QUESTION", "answer " * 40)
    full, cut_p, cut_r = tokenize_example(long, renderer, 1000, 999)
    assert full is not None and not cut_p and not cut_r
    ex, cut_p, cut_r = tokenize_example(long, renderer, 40, 10)
    assert ex is not None and cut_p and cut_r
    assert len(ex.prompt_ids) == 10 and ex.prompt_ids[0] == tokenizer.bos_token_id
    assert ex.prompt_ids[1:] == full.prompt_ids[-9:]
    assert len(ex.input_ids) == 40 and ex.response_ids == full.response_ids[:30]
    assert tokenizer.eos_token_id not in ex.response_ids  # a cut response did not end


def test_stats_count_truncation(tokenizer: Any) -> None:
    examples = [CHAT, Example("word " * 50, "x"), Example("p", "answer " * 40)]
    out, stats = tokenize_examples(examples, Renderer(tokenizer), 32, 16)
    # CHAT's rendered prompt (~24 tokens) and the 50-word prompt exceed 16; only the 40-word answer is cut.
    assert (stats.rows, stats.kept, stats.prompt_truncated, stats.response_truncated) == (3, 3, 2, 1)
    assert [ex.index for ex in out] == [0, 1, 2]
    assert "3/3 rows kept" in stats.summary()


def test_collate_right_pads_and_masks(tokenizer: Any) -> None:
    out, _ = tokenize_examples([CHAT, Example("p", "a b")], Renderer(tokenizer), 64, 32)
    batch = collate(out, pad_id=0)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    short = len(out[1].input_ids)
    assert batch["attention_mask"][1].tolist() == [1] * short + [0] * (batch["input_ids"].shape[1] - short)
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    prompts = collate_prompts([[5, 6, 7], [8]], pad_id=0)
    assert prompts["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert prompts["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
