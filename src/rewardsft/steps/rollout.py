"""RFT's round: the rollout (k samples per prompt with their log-probs under the sampler and π_init), the
reward model's Bradley–Terry step and the policy's RLOO step against it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import GenerationConfig, RFTConfig
from rewardsft.data import TokenizedExample
from rewardsft.data.collate import batch_on, collate_branches
from rewardsft.errors import ConfigError
from rewardsft.generation import Generation, Sampler, as_example, generation_stats, make_sampler
from rewardsft.layout import REWARD_ADAPTER, REWARD_MODEL
from rewardsft.logprobs import (
    BLOCK_MASK_KEYS,
    TokenLogps,
    block_mask_logits,
    block_mask_problem,
    branch_token_logps,
    check_block_mask,
    model_token_logps,
    sequence_logps,
)
from rewardsft.losses import (
    kl_penalised_rewards,
    normalise_rewards,
    reward_bt_loss,
    rloo_advantages,
    rloo_policy_loss,
    sequence_kl,
)
from rewardsft.models import eval_mode, is_peft
from rewardsft.reward import (
    check_shared_rm,
    rm_scores,
    save_reward_model,
    score_examples,
    shared_rm_problem,
    shared_rm_scores,
)
from rewardsft.training.batches import epoch_permutation
from rewardsft.training.engine import Engine, EngineRules
from rewardsft.training.run import Run
from rewardsft.training.step import derive_seed


def check_rft_engine(engine: Engine, config: RFTConfig) -> None:
    """RFT's rules beyond the engine's own. A round's prompts split evenly over the processes. Each process averages
    its own samples' loss and the engine averages the processes: uneven shares would weight samples unequally (and
    hang a sharded policy, where every forward and backward is a collective)."""
    prompts, world = config.rft.prompts_per_iteration, engine.world_size
    if prompts % world:
        raise ConfigError(
            f"rft.prompts_per_iteration={prompts} does not split evenly over {world} processes; choose a multiple "
            "of the number of processes"
        )
    if engine.scaled_fp16:
        raise ConfigError(
            f"model.dtype=float16 under {engine.name}: the policy trains under its loss scaler, but RFT's reward "
            "model trains outside it, in float16 with neither a loss scaler nor fp32 master weights; use "
            "model.dtype=bfloat16 or float32"
        )


# A round is set in prompts, not in a share of the data: a checkpoint resumes under any global batch.
RFT_RULES = EngineRules(check=check_rft_engine, data_plan=False)


@dataclass
class Rollout:
    """k samples for each of P prompts, sample j of prompt p at row p*k + j."""

    demos: list[TokenizedExample]
    """(P,) the demonstrations of the prompts."""
    gens: list[TokenizedExample]
    """(P*k,) prompt + sampled response."""
    old_logps: torch.Tensor | None
    """(P*k,) sequence log-probs under the sampling policy (None in a round with no policy step)."""
    kl: torch.Tensor | None
    """(P*k,) KL estimate to the initial policy (None in a round with no policy step)."""
    entropy: float | None
    """Mean −log π of the sampled tokens: a Monte-Carlo estimate of the per-token entropy (at temperature 1)."""
    stats: dict[str, float]


@dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    """What the RFT step functions need from the config."""

    samples_per_prompt: int
    max_length: int
    batch_size: int
    """Micro-batch of the reward and policy steps."""
    eval_batch_size: int
    generation: GenerationConfig
    seed: int
    pad_id: int
    sampler: Sampler
    """Draws the rollout's and the held-out check's samples (``generation.make_sampler``)."""
    kl_coef: float
    reward_norm: str
    reward_clip: float | None
    clip_ratio: float
    preference_weight: float
    shared: bool = False
    """One row per prompt with its k samples (``rft.rollout_forward=shared``)."""

    @property
    def chunk(self) -> int:
        """Samples per forward of a micro-batch of ``batch_size``: whole prompts' k samples when shared."""
        return (
            max(self.batch_size // self.samples_per_prompt, 1) * self.samples_per_prompt
            if self.shared
            else self.batch_size
        )

    @property
    def eval_chunk(self) -> int:
        """The same for the no-grad forwards of ``eval_batch_size``."""
        k = self.samples_per_prompt
        return max(self.eval_batch_size // k, 1) * k if self.shared else self.eval_batch_size

    @classmethod
    def from_config(cls, config: RFTConfig, pad_id: int, stop_ids: list[int], shared: bool = False) -> RolloutSpec:
        """``shared``: the resolved ``rft.rollout_forward`` (:func:`rollout_forward`) is ``shared``."""
        rc = config.rft
        return cls(
            samples_per_prompt=rc.samples_per_prompt,
            max_length=config.data.max_length,
            batch_size=config.train.batch_size,
            eval_batch_size=config.train.eval_batch,
            generation=config.generation,
            seed=config.seed,
            pad_id=pad_id,
            sampler=make_sampler(config.generation, pad_id, stop_ids),
            kl_coef=rc.kl_coef,
            reward_norm=rc.reward_norm,
            reward_clip=rc.reward_clip,
            clip_ratio=rc.clip_ratio,
            preference_weight=rc.preference_weight,
            shared=shared,
        )


def rollout_forward(config: RFTConfig, policy: Any, reward_model: Any) -> str:
    """``rft.rollout_forward`` resolved: ``shared`` asked for is checked (refused, with the mode to use, where the
    policy or the reward model would not apply the mask); ``auto`` is shared on CPU where both take it, by
    measurement (docs/performance.md: 0.53-0.73x the round's time on CPU), else separate (no GPU measured)."""
    asked = config.rft.rollout_forward
    if asked == "shared":
        check_block_mask(policy, "rft.rollout_forward=shared", "use rft.rollout_forward=separate")
        check_shared_rm(reward_model, "rft.rollout_forward=shared", "use rft.rollout_forward=separate")
    if asked != "auto":
        return asked
    on_cpu = next(policy.parameters()).device.type == "cpu"
    takes_mask = on_cpu and block_mask_problem(policy) is None and shared_rm_problem(reward_model) is None
    return "shared" if takes_mask else "separate"


def iteration_prompts(n_examples: int, config: RFTConfig, iteration: int, run: Run) -> list[int]:
    """This process's share of round ``iteration``'s prompts, walking seeded shuffles of the data."""
    per_round = config.rft.prompts_per_iteration
    first = iteration * per_round
    orders: dict[int, list[int]] = {}
    ids = []
    for position in range(first, first + per_round):
        epoch, offset = divmod(position, n_examples)
        if epoch not in orders:
            orders[epoch] = epoch_permutation(n_examples, config.seed, epoch)
        ids.append(orders[epoch][offset])
    return ids[run.rank :: run.world_size]


@torch.no_grad()
def make_rollout(
    run: Run,
    policy: Any,
    reference: Any | None,
    demos: list[TokenizedExample],
    spec: RolloutSpec,
    iteration: int,
    logps: bool = True,
) -> Rollout:
    """Sample k responses per prompt; log-probs under the sampler and the initial policy, computed once.

    ``logps=False`` (a round with no policy step, e.g. the audit's reward step alone) skips those two forwards,
    which only the policy step reads (SmolLM2-135M, 32 samples of 48 tokens, idle CPU: 24 s a round before, 21 s after).
    """
    k = spec.samples_per_prompt
    unwrapped = run.engine.unwrap(policy)
    prompts = [d for d in demos for _ in range(k)]
    generations, gens = sample_examples(run, policy, prompts, spec, "rft/generate", iteration)
    stats = generation_stats(generations, [d.response_ids for d in prompts])
    if not logps:
        return Rollout(demos, gens, None, None, None, stats)
    old, kl = [], []
    entropy_sum, n_tokens = 0.0, 0
    with eval_mode(unwrapped):
        for start in range(0, len(gens), spec.eval_chunk):
            chunk = gens[start : start + spec.eval_chunk]
            tokens = sample_token_logps(unwrapped, chunk, spec, run.device)
            if reference is None:
                with unwrapped.disable_adapter():
                    ref_tokens = sample_token_logps(unwrapped, chunk, spec, run.device)
            else:
                ref_tokens = sample_token_logps(reference, chunk, spec, run.device)
            old.append(sequence_logps(tokens))
            kl.append(sequence_kl(tokens.logps, ref_tokens.logps, tokens.mask))
            entropy_sum += float(-(tokens.logps * tokens.mask).sum())
            n_tokens += int(tokens.mask.sum())
    return Rollout(demos, gens, torch.cat(old), torch.cat(kl), entropy_sum / max(n_tokens, 1), stats)


def sample_token_logps(model: Any, gens: list[TokenizedExample], spec: RolloutSpec, device: torch.device) -> TokenLogps:
    """Per-token log-probs of rollout samples (whole prompts' k samples, in rollout order): a row each, or with
    ``spec.shared`` one row per prompt, ``[prompt | sample 1 | ... | sample k]`` (the same log-probs)."""
    if not spec.shared:
        return model_token_logps(model, **batch_on(gens, spec.pad_id, device))
    k = spec.samples_per_prompt
    if len(gens) % k or any(gens[i].prompt_ids != gens[i - i % k].prompt_ids for i in range(len(gens))):
        raise ValueError(f"shared rows need whole prompts' {k} samples, in rollout order")
    rows = [(gens[i].prompt_ids, [g.response_ids for g in gens[i : i + k]]) for i in range(0, len(gens), k)]
    batch = {key: value.to(device) for key, value in collate_branches(rows, spec.pad_id).items()}
    logits = block_mask_logits(model, *(batch[key] for key in BLOCK_MASK_KEYS))
    return branch_token_logps(logits, batch["source"], batch["labels"], batch["row_of"])


def sample_examples(
    run: Run, policy: Any, prompts: list[TokenizedExample], spec: RolloutSpec, purpose: str, step: int
) -> tuple[list[Generation], list[TokenizedExample]]:
    """One sample per prompt from the current policy, seeded per purpose, step and process; also as examples
    (prompt + response cut to ``data.max_length``) ready to score or train on."""
    with run.engine.decoding(policy) as decoder:
        seed = derive_seed(spec.seed, purpose, step, run.rank)
        generations = spec.sampler.sample(decoder, [p.prompt_ids for p in prompts], seed)
    return generations, [as_example(p, g, spec.max_length) for p, g in zip(prompts, generations, strict=True)]


def reward_step(
    run: Run, reward_model: Any, rollout: Rollout, preference: list[Any], spec: RolloutSpec, iteration: int
) -> dict[str, float]:
    """Backpropagate one BT step over every (demonstration, generation) pair of the round (+ preference pairs).

    The reward model is not prepared by accelerate (its read-out calls the backbone and head directly), so it
    backpropagates with plain ``backward`` (no fp16 loss scaling that nothing would undo) and its gradients are
    averaged across processes explicitly before the optimiser step.
    """
    k = spec.samples_per_prompt
    pairs = [(rollout.demos[i // k], gen) for i, gen in enumerate(rollout.gens)]
    totals = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(pairs), spec.chunk):
        chunk = pairs[start : start + spec.chunk]  # whole prompts' pairs when shared
        if spec.shared:
            terms = shared_bt_terms(reward_model, chunk, k, spec.pad_id, run.device)
        else:
            terms = bt_terms(reward_model, chunk, spec.pad_id, run.device)
        loss = terms.loss.sum() / len(pairs)
        if preference:
            pick = [preference[(iteration * len(pairs) + start + j) % len(preference)] for j in range(len(chunk))]
            mixed = bt_terms(reward_model, pick, spec.pad_id, run.device).loss.sum() / len(pairs)
            loss = loss + spec.preference_weight * mixed
        loss.backward()
        parts = [terms.loss.detach().sum(), terms.accuracy.sum(), terms.margin.detach().sum()]
        totals += torch.stack([p.double().cpu() for p in parts]) / len(pairs)
    run.average_gradients(reward_model)
    return dict(zip(("rm/loss", "rm/accuracy", "rm/margin"), totals.tolist(), strict=True))


def bt_terms(
    reward_model: Any, pairs: list[tuple[TokenizedExample, TokenizedExample]], pad_id: int, device: torch.device
) -> Any:
    batch = batch_on([p[0] for p in pairs] + [p[1] for p in pairs], pad_id, device)
    scores = rm_scores(reward_model, batch["input_ids"], batch["attention_mask"])
    return reward_bt_loss(scores[: len(pairs)], scores[len(pairs) :])


def shared_bt_terms(
    reward_model: Any, pairs: list[tuple[TokenizedExample, TokenizedExample]], k: int, pad_id: int, device: torch.device
) -> Any:
    """:func:`bt_terms` of whole prompts' pairs (prompt p's k pairs at p·k ... p·k + k − 1) from one row per
    prompt, ``[prompt | demonstration | sample 1 | ... | sample k]``: the demonstration scored once, not k times."""
    if len(pairs) % k or any(
        demo is not pairs[i - i % k][0] or gen.prompt_ids != demo.prompt_ids for i, (demo, gen) in enumerate(pairs)
    ):
        raise ValueError(f"shared rows need whole prompts' {k} pairs, each sampled from its demonstration's prompt")
    rows = [
        (pairs[i][0].prompt_ids, [pairs[i][0].response_ids, *(gen.response_ids for _, gen in pairs[i : i + k])])
        for i in range(0, len(pairs), k)
    ]
    batch = {key: value.to(device) for key, value in collate_branches(rows, pad_id).items()}
    scores = shared_rm_scores(reward_model, batch).view(len(rows), k + 1)
    return reward_bt_loss(scores[:, 0].repeat_interleave(k), scores[:, 1:].reshape(-1))


def policy_step(
    engine: Engine, policy: Any, rollout: Rollout, scores: torch.Tensor, spec: RolloutSpec
) -> dict[str, float]:
    """Backpropagate one RLOO step over the whole rollout, micro-batched; gradients sync on the last one."""
    if rollout.old_logps is None or rollout.kl is None:
        raise ValueError("a policy step needs the rollout's log-probs (make_rollout(..., logps=True))")
    device = engine.device
    # The KL to π_init is part of the reward (per sequence), so RLOO's baseline sees it too.
    rewards = kl_penalised_rewards(scores.to(device), rollout.kl.to(device), spec.kl_coef)
    rewards = normalise_rewards(rewards, spec.reward_norm, spec.reward_clip, round_moments(engine, rewards))
    advantages = rloo_advantages(rewards.view(-1, spec.samples_per_prompt)).view(-1)
    n, size, total = len(rollout.gens), spec.chunk, 0.0
    for start in range(0, n, size):
        ids = list(range(start, min(start + size, n)))
        with engine.accumulate(policy, last=start + size >= n):
            logps = sequence_logps(sample_token_logps(policy, [rollout.gens[i] for i in ids], spec, device))
            loss = rloo_policy_loss(logps, rollout.old_logps[ids].to(device), advantages[ids], spec.clip_ratio)
            engine.backward(loss * len(ids) / n)  # the micro-batch's share of the rollout's mean
        total += float(loss.detach()) * len(ids) / n
    return {"policy/loss": total}


def round_moments(engine: Engine, rewards: torch.Tensor) -> tuple[float, float] | None:
    """Mean and (unbiased) std of the whole round's rewards over every process; None in one process."""
    if engine.world_size == 1:
        return None
    local = {"n": rewards.numel(), "sum": float(rewards.sum()), "squares": float((rewards.double() ** 2).sum())}
    total = engine.reduce(local, reduction="sum")
    mean = total["sum"] / total["n"]
    variance = (total["squares"] - total["n"] * mean**2) / max(total["n"] - 1, 1.0)
    return mean, max(variance, 0.0) ** 0.5


def held_out_rm_accuracy(
    run: Run, policy: Any, reward_model: Any, held_out: list[TokenizedExample], spec: RolloutSpec, step: int
) -> float:
    """Share of ``held_out`` prompts where r_φ scores the demonstration above the current policy's sample."""
    demos = held_out[run.rank :: run.world_size]
    _, gens = sample_examples(run, policy, demos, spec, "rft/held-out", step)
    demo_scores = score_examples(reward_model, demos, spec.eval_batch_size, spec.pad_id)
    gen_scores = score_examples(reward_model, gens, spec.eval_batch_size, spec.pad_id)
    wins = sum(d > g for d, g in zip(demo_scores, gen_scores, strict=True))
    totals = run.engine.reduce({"wins": wins, "n": len(demos)}, reduction="sum")
    return totals["wins"] / max(totals["n"], 1.0)


def save_reward_weights(tmp: Path, reward_model: Any, tokenizer: Any) -> None:
    """The reward model as it trains, into a checkpoint: LoRA as adapter + head (resumable), else merged."""
    if is_peft(reward_model):
        reward_model.save_pretrained(str(tmp / REWARD_ADAPTER))
    else:
        save_reward_model(tmp / REWARD_MODEL, reward_model, tokenizer)
