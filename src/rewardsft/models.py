"""Load tokenizers and policies (dtype, LoRA, gradient checkpointing)."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import LoraConfig, ModelConfig
from rewardsft.errors import ConfigError
from rewardsft.layout import ADAPTER

# Attention + MLP projections per architecture: LoRA on all of them is the common, strong default.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
OUTPUT_HEADS = {"lm_head", "embed_out", "score"}
BASE_WEIGHTS = "base.safetensors"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float32 under accelerate's mixed precision (it keeps float32 master weights and casts inside
    autocast; an fp16 loss scaler refuses fp16 gradients), else bfloat16 on CUDA (the paper's setting), float32
    elsewhere."""
    if name == "auto":
        if mixed_precision() != "no":
            return torch.float32
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def mixed_precision() -> str:
    """accelerate's mixed precision for this launch (``no``, ``fp16``, ``bf16``, ...): ``accelerate launch`` exports
    it as ``ACCELERATE_MIXED_PRECISION``, which is also what the run's ``Accelerator()`` reads."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()


def _hub_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    return kwargs


def load_tokenizer(cfg: ModelConfig, path: str | Path | None = None) -> Any:
    """Tokenizer of the model; a missing pad token falls back to EOS (padding is always masked)."""
    from transformers import AutoTokenizer

    source = str(path or cfg.name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_hub_kwargs(cfg))
    except (OSError, ValueError) as err:
        raise ConfigError(f"could not load the tokenizer of model.name_or_path={source!r}: {err}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer of {source!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(cfg: ModelConfig, device: torch.device, path: str | Path | None = None) -> Any:
    from transformers import AutoModelForCausalLM

    source = str(path or cfg.name_or_path)
    kwargs: dict[str, Any] = _hub_kwargs(cfg) if path is None else {"trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = attention(cfg, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(cfg.dtype, device), **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"could not load model.name_or_path={source!r}: {err}") from None
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False
    # On ``device`` at once: models accelerate never prepares (RFT's frozen reference, evaluation, sampling) would
    # otherwise stay on the CPU of a GPU machine (the GPU check caught RFT's reference there).
    return model.to(device)


def attention(cfg: ModelConfig, device: torch.device) -> str:
    """``model.attn_implementation``, checked where transformers' own error would be obscure."""
    if cfg.attn_implementation == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation=flash_attention_2 needs the flash-attn package")
        if device.type != "cuda" or resolve_dtype(cfg.dtype, device) == torch.float32:
            raise ConfigError(
                "model.attn_implementation=flash_attention_2 needs a GPU and model.dtype bfloat16/float16"
            )
    return cfg.attn_implementation


def lora_target_modules(model: torch.nn.Module, cfg: LoraConfig) -> list[str]:
    if cfg.target_modules != "auto":
        return list(cfg.target_modules)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    # Unknown architecture: every Linear leaf except the output head.
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in OUTPUT_HEADS
    }
    if not names:
        raise ConfigError(f"cannot find Linear layers for LoRA in {model_type!r}; set lora.target_modules")
    return sorted(names)


def apply_lora(model: Any, cfg: LoraConfig, task_type: str = "CAUSAL_LM", checkpointing: bool = False) -> Any:
    import peft

    lora = peft.LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_target_modules(model, cfg),
        task_type=task_type,
    )
    if checkpointing:
        # With frozen embeddings, checkpointed blocks would otherwise see inputs without grad.
        model.enable_input_require_grads()
    return peft.get_peft_model(model, lora)


def load_policy(cfg: ModelConfig, lora: LoraConfig, device: torch.device, checkpoint: Path | None = None) -> Any:
    """The trainable policy: from ``cfg`` or, on resume, from a checkpoint written by ``save_policy``."""
    if checkpoint is None:
        model = load_causal_lm(cfg, device)
        return apply_lora(model, lora, checkpointing=cfg.gradient_checkpointing) if lora.enabled else model
    if lora.enabled:
        import peft

        base = load_causal_lm(cfg, device)
        base_file = checkpoint / BASE_WEIGHTS
        if base_file.is_file():
            from safetensors.torch import load_file

            base.load_state_dict(load_file(str(base_file), device=str(device)))
        if cfg.gradient_checkpointing:
            base.enable_input_require_grads()
        return peft.PeftModel.from_pretrained(base, str(checkpoint / ADAPTER), is_trainable=True)
    return load_causal_lm(cfg, device, path=checkpoint / "model")


def save_policy(
    model: Any, out: Path, state_dict: dict[str, torch.Tensor] | None = None, with_base: bool = False
) -> None:
    """Write the adapter (LoRA) to ``out/adapter`` or the full model to ``out/model``.

    ``with_base`` also writes a LoRA model's base weights (``out/base.safetensors``), for runs that
    change them (IRFT's ``lora`` snapshot merges the adapter into the base at every stage).
    """
    if is_peft(model):
        model.save_pretrained(str(out / ADAPTER), state_dict=state_dict)
        if with_base:
            from safetensors.torch import save_file

            base = model.get_base_model()
            # Keys as in the plain model (peft inserts ".base_layer" into wrapped layers' names).
            weights = {
                k.replace(".base_layer", ""): v.contiguous() for k, v in base.state_dict().items() if "lora_" not in k
            }
            save_file(_untie(weights), str(out / BASE_WEIGHTS))
    else:
        with original_dropout_config(model):
            model.save_pretrained(str(out / "model"), state_dict=state_dict, safe_serialization=True)


def whole_peft_copy(model: Any, weights: dict[str, torch.Tensor]) -> Any:
    """A CPU copy of the peft ``model`` holding ``weights``, its whole state (keyed as ``model.state_dict()``):
    what rank 0 exports and merges when the live model's parameters are ZeRO-3 partitions. The copy shares the
    live base's config object, so the dropout rates ``disable_dropout`` recorded for it are the ones written."""
    import peft
    from transformers import AutoModelForCausalLM

    base = model.get_base_model()
    dtype = next(iter(weights.values())).dtype
    copy = AutoModelForCausalLM.from_config(base.config, dtype=dtype)
    copy.config = base.config
    copy = peft.get_peft_model(copy, model.peft_config[model.active_adapter])
    copy.load_state_dict(weights, strict=True)
    return copy


# Dropout rates disable_dropout zeroed in a model's config (by the config's id: configs are unhashable), restored
# while the config is written out; an entry goes when its config is collected.
_CONFIG_DROPOUT: dict[int, dict[str, float]] = {}


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability in ``model`` to 0 (LoRA's included); returns how many were non-zero.

    Covers ``nn.Dropout`` modules, the float attributes attention layers pass to the attention kernel (Llama's
    ``attention_dropout``, OPT's ``dropout``) and the config's rates, which some models read in their forward
    (GPT-Neo, Falcon). Exports keep the original rates (:func:`original_dropout_config`).
    """
    changed = 0
    config = getattr(model, "config", None)
    if config is not None:
        rates = {k: v for k, v in vars(config).items() if _is_dropout_rate(k, v) and v > 0}
        if rates and id(config) not in _CONFIG_DROPOUT:
            weakref.finalize(config, _CONFIG_DROPOUT.pop, id(config), None)
        _CONFIG_DROPOUT.setdefault(id(config), {}).update(rates)
        for key in rates:
            setattr(config, key, 0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            changed += module.p > 0
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool):
                changed += value > 0
                setattr(module, name, 0.0)
    return int(changed)


@contextmanager
def eval_mode(*models: Any) -> Iterator[None]:
    """Switch ``models`` to eval mode and restore each one's train/eval mode afterwards."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


def _is_dropout_rate(name: str, value: Any) -> bool:
    return ("dropout" in name or name.endswith("pdrop")) and isinstance(value, float)


@contextmanager
def original_dropout_config(model: Any) -> Iterator[None]:
    """While saving: the config carries the dropout rates it had before :func:`disable_dropout`."""
    config = getattr(model, "config", None)
    rates = _CONFIG_DROPOUT.get(id(config), {}) if config is not None else {}
    for key, value in rates.items():
        setattr(config, key, value)
    try:
        yield
    finally:
        for key in rates:
            setattr(config, key, 0.0)


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): store a copy of each repeat."""
    seen: set[int] = set()
    out = {}
    for name, tensor in weights.items():
        ptr = tensor.data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


BLOCK_MASK_ATTENTION = ("sdpa", "eager")
"""The attention kernels that take an arbitrary (B, 1, T, T) mask; flash attention takes none."""


def hf_config(model: Any) -> Any:
    """The transformers config of ``model`` (unwrapping DDP), or None for a model without one."""
    return getattr(getattr(model, "module", model), "config", None)


def block_mask_refusal(model: Any) -> str | None:
    """Why ``model``'s attention would not apply a 4-D mask as given, or None when it should (what the config
    says; :func:`rewardsft.logprobs.check_block_mask` also runs the model once to be sure)."""
    config = hf_config(model)
    if config is None:
        return "needs a transformers model (its config names the attention kernel)"
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in BLOCK_MASK_ATTENTION:
        return f"needs sdpa or eager attention, not {impl}"
    # Multimodal wrappers (Gemma 3) keep the language model's sliding window in the text config.
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    if window is not None and getattr(text, "use_sliding_window", True):
        # A custom 4-D mask replaces the model's own, sliding window included: the model would see too far.
        return f"cannot keep this model's sliding window ({window})"
    return None


def block_attention_mask(model: Any, visible: torch.Tensor) -> torch.Tensor:
    """The (B, 1, T, T) mask ``model``'s attention kernel takes for ``visible`` (B, T, T) bool: boolean for
    sdpa (any compute dtype), additive in the weights' dtype for eager (which adds it to the scores)."""
    mask = visible.unsqueeze(1)
    if getattr(hf_config(model), "_attn_implementation", None) == "sdpa":
        return mask
    dtype = next(model.parameters()).dtype
    # Every row sees itself, so a score plus finfo.min overflowing to -inf in half precision is harmless.
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
