"""Sample responses from a policy with exactly the prompt ids used in training.

Prompts come from :func:`rewardsft.data.tokenize.render_prompt_ids` (via ``TokenizedExample.prompt_ids``),
so generation and training can never disagree about the chat template (SPIN issue #33). Sampling settings
come from our ``GenerationConfig`` alone: a checkpoint's own ``generation_config`` (``repetition_penalty``,
``no_repeat_ngram_size``, ...) would make IRFT/RFT samples come from something other than π_θ.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rewardsft.config import GenerationConfig, ModelConfig
from rewardsft.data.collate import collate_prompts
from rewardsft.data.formats import Prompt
from rewardsft.data.tokenize import Renderer, TokenizedExample, render_prompt_ids, truncate_prompt
from rewardsft.errors import ConfigError
from rewardsft.models import eval_mode, load_causal_lm, load_tokenizer
from rewardsft.sharding import in_lockstep, is_sharded, lockstep

if TYPE_CHECKING:
    from rewardsft.layout import Rendering


@dataclass(frozen=True)
class Generation:
    """One sampled response: its token ids (EOS kept when the model stopped) and whether it hit the cap."""

    response_ids: list[int]
    stopped: bool
    """True when the model emitted EOS; False when ``max_new_tokens`` cut it."""


class Sampler(Protocol):
    """The sampler seam: what IRFT's stages and RFT's rounds are handed to draw one response per prompt. Lockstep
    over sharded processes is the sampler's business; the weights it decodes with come from the engine
    (``Engine.decoding``), so a new backend (vLLM on GPU, transformers' continuous batching) is one class here and
    a line in :func:`make_sampler`."""

    def sample(self, model: Any, prompts: Sequence[Sequence[int]], seed: int) -> list[Generation]:
        """One response per prompt, in input order; seeded, and every process calls it at the same point."""
        ...


@dataclass(frozen=True)
class HFSampler:
    """transformers' ``generate`` (:func:`generate`): batched, left-padded, KV cache, ``synced_gpus`` when sharded.
    transformers' continuous batching (``generate_batch``, paged attention) gave the same greedy tokens 1.15-2.4x
    slower on a 2-core CPU at IRFT's batch size (``benchmarks/continuous_batching.py``, docs/performance.md), so it
    is not offered."""

    cfg: GenerationConfig
    pad_id: int
    eos_ids: tuple[int, ...]

    def sample(self, model: Any, prompts: Sequence[Sequence[int]], seed: int) -> list[Generation]:
        return generate(model, prompts, self.cfg, pad_id=self.pad_id, eos_ids=self.eos_ids, seed=seed)


def make_sampler(cfg: GenerationConfig, pad_id: int, eos_ids: Sequence[int]) -> Sampler:
    """The sampler a recipe hands its steps (transformers' ``generate`` today: the only backend measured to pay)."""
    return HFSampler(cfg, pad_id, tuple(eos_ids))


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    *,
    pad_id: int,
    eos_ids: Sequence[int],
    seed: int,
) -> list[Generation]:
    """Sample one response per prompt, batched with left padding and the KV cache.

    Seeded and side-effect free: the global RNG and the model's train/eval mode are restored afterwards.
    Prompts are processed longest first (less padding) and returned in input order.

    A sharded model (FSDP2) gathers its weights in every forward, a collective: all processes then decode the same
    number of batches (a process with fewer runs a one-token dummy batch) and keep stepping until every process's
    batch has finished (``synced_gpus``).
    """
    model = in_generation_dtype(model, cfg)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = [order[start : start + cfg.batch_size] for start in range(0, len(order), cfg.batch_size)]
    synced = in_lockstep(model)
    results: dict[int, Generation] = {}
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices), torch.no_grad(), only_our_sampling_settings(model):
        torch.manual_seed(seed)
        for batch_idx, real in lockstep(batches, model, dummy=[]):
            batch: list[Sequence[int]] = [prompts[i] for i in batch_idx] if real else [[pad_id]]
            outputs = _generate_batch(model, batch, cfg, pad_id, eos_ids, device, synced)
            if real:
                results.update(zip(batch_idx, outputs, strict=True))
    return [results[i] for i in range(len(prompts))]


def in_generation_dtype(model: Any, cfg: GenerationConfig) -> Any:
    """``model`` itself, or for ``generation.dtype=bfloat16`` a bf16 copy of it (the policy keeps its weights)."""
    if cfg.dtype == "auto" or next(model.parameters()).dtype == torch.bfloat16:
        return model
    if is_sharded(model):
        raise ConfigError(
            "generation.dtype=bfloat16 is not supported with sharded parameters (FSDP2, ZeRO-3); use generation.dtype=auto"
        )
    return copy.deepcopy(model).to(torch.bfloat16)


@contextmanager
def only_our_sampling_settings(model: Any) -> Iterator[None]:
    """Hide the checkpoint's ``generation_config`` while generating: transformers fills every setting we do not
    pass from it, so e.g. a shipped ``repetition_penalty`` would silently change the sampling distribution."""
    from transformers import GenerationConfig as HFGenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = getattr(inner, "generation_config", None)
    inner.generation_config = HFGenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


def end_of_turn_ids(renderer: Renderer, model: Any | None = None) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS, the ids the model's ``generation_config`` declares
    (often a list), and the special token that closes an assistant turn in the chat template."""
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [*renderer.stop_ids, *([declared] if isinstance(declared, int) else list(declared or []))]
    return list(dict.fromkeys(ids))


def _generate_batch(
    model: Any,
    prompts: list[Sequence[int]],
    cfg: GenerationConfig,
    pad_id: int,
    eos_ids: Sequence[int],
    device: torch.device,
    synced: bool = False,
) -> list[Generation]:
    batch = {k: v.to(device) for k, v in collate_prompts(prompts, pad_id).items()}
    sampling: dict[str, Any] = {"do_sample": cfg.do_sample}
    if cfg.cache == "static":
        sampling["cache_implementation"] = "static"
    if cfg.do_sample:
        sampling.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    out = model.generate(
        **batch,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=list(eos_ids),
        use_cache=True,
        synced_gpus=synced,
        **sampling,
    )
    new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
    return [cut_at_eos(row, eos_ids) for row in new_tokens]


def as_example(prompt: TokenizedExample, generation: Generation, max_length: int) -> TokenizedExample:
    """The prompt with a sampled response, cut to ``max_length`` tokens like a training example."""
    room = max_length - len(prompt.prompt_ids)
    return TokenizedExample(prompt.prompt_ids, generation.response_ids[:room], prompt.index)


@dataclass(frozen=True)
class Response:
    """A decoded sample: its text, how many tokens it took (EOS included) and whether the model stopped."""

    text: str
    tokens: int
    stopped: bool


def sample_responses(
    rendering: Rendering,
    prompts: list[Prompt],
    generation: GenerationConfig,
    seed: int,
    n: int = 1,
    model_config: ModelConfig | None = None,
) -> list[Response]:
    """``n`` sampled responses per prompt (prompt-major order), rendered and truncated by ``rendering``
    (:func:`rewardsft.layout.renderings_for`: a run renders as it trained); ``model_config`` loads the model with
    the user's settings (revision, dtype, ...), else ``rendering.path`` as a plain folder or hub id."""
    if model_config is not None and model_config.name_or_path != rendering.path:
        raise ValueError(f"model_config names {model_config.name_or_path}, the rendering {rendering.path}")
    settings = rendering.settings
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = model_config or ModelConfig(name_or_path=rendering.path)
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, device)
    renderer = Renderer.from_settings(tokenizer, settings)
    ids = [truncate_prompt(render_prompt_ids(p, renderer), settings.max_prompt_length, renderer)[0] for p in prompts]
    samples = generate(
        model,
        [p for p in ids for _ in range(n)],
        generation,
        pad_id=tokenizer.pad_token_id,
        eos_ids=end_of_turn_ids(renderer, model),
        seed=seed,
    )
    return [
        Response(tokenizer.decode(s.response_ids, skip_special_tokens=True), len(s.response_ids), s.stopped)
        for s in samples
    ]


def sample_texts(
    rendering: Rendering, prompts: list[Prompt], generation: GenerationConfig, seed: int, n: int = 1
) -> list[str]:
    """The texts of :func:`sample_responses`."""
    return [r.text for r in sample_responses(rendering, prompts, generation, seed, n)]


def cut_at_eos(tokens: Sequence[int], eos_ids: Sequence[int]) -> Generation:
    """Keep tokens up to and including the first EOS (padding after it is dropped)."""
    for pos, token in enumerate(tokens):
        if token in eos_ids:
            return Generation(list(tokens[: pos + 1]), stopped=True)
    return Generation(list(tokens), stopped=False)


TRUNCATION_WARN_SHARE = 0.9


def truncation_warning(stats: dict[str, float], max_new_tokens: int) -> str | None:
    """A warning when nearly every sample hit ``generation.max_new_tokens``: demonstrations end on their own and
    generations do not, so a reward (explicit or implicit) can tell them apart by length and ending alone (the
    real-model demo's RFT collapsed this way, docs/LOG.md)."""
    share = stats.get("gen/max_tokens_share", 0.0)
    if share < TRUNCATION_WARN_SHARE:
        return None
    return (
        f"warning: {share:.0%} of the samples hit generation.max_new_tokens={max_new_tokens}: the reward can separate "
        "demonstrations from generations by their length and ending alone; raise generation.max_new_tokens"
    )


def generation_stats(generations: Sequence[Generation], demo_responses: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean length, share identical to the demonstration (zero-gradient pairs), share cut by the cap, and share
    empty (the model ended its turn at once: such a sample is kept, an end-of-turn token alone, and counted)."""
    n = max(len(generations), 1)
    return {
        "gen/mean_length": sum(len(g.response_ids) for g in generations) / n,
        "gen/identical_share": sum(
            list(g.response_ids) == list(d) for g, d in zip(generations, demo_responses, strict=True)
        )
        / n,
        "gen/max_tokens_share": sum(not g.stopped for g in generations) / n,
        "gen/empty_share": sum(g.stopped and len(g.response_ids) <= 1 for g in generations) / n,
    }
