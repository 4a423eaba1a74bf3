"""Tiny random causal LMs with an in-process BPE tokenizer, for tests and demos without a model hub."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from rewardsft.data.builtin import builtin_corpus

Arch = Literal["llama", "gpt_neox"]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]


def train_tokenizer(
    corpus: Sequence[str],
    vocab_size: int = 512,
    add_bos: bool = True,
    chat_template: str | None = CHATML_TEMPLATE,
) -> Any:
    """A byte-level BPE tokenizer; EOS is ``<|im_end|>`` (as in ChatML models), BOS optional."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id("<|bos|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos_id)]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template:
        wrapped.chat_template = chat_template
    return wrapped


def tiny_model(tokenizer: Any, arch: Arch = "llama", hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Any:
    """A randomly initialised causal LM sized to the tokenizer (a fwd+bwd step takes milliseconds)."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": hidden_size * 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    config: Any
    if arch == "llama":
        config = LlamaConfig(num_key_value_heads=2, **common)
    elif arch == "gpt_neox":
        config = GPTNeoXConfig(**common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r} (llama or gpt_neox)")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def write_tiny_model(
    out_dir: str | Path,
    arch: Arch = "llama",
    corpus: Sequence[str] | None = None,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    chat_template: bool = True,
) -> Path:
    """Write a model + tokenizer loadable with ``AutoModelForCausalLM``/``AutoTokenizer.from_pretrained``."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(
        list(corpus) if corpus else builtin_corpus(),
        add_bos=arch == "llama",
        chat_template=CHATML_TEMPLATE if chat_template else None,
    )
    model = tiny_model(tokenizer, arch, hidden_size, layers, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
