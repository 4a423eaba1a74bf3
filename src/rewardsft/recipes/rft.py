"""RFT (the paper's Algorithm 1): an explicit reward model learned from demonstrations vs own generations,
alternating with KL-regularised policy optimisation against it.

Each round: sample k responses per prompt with the current policy; reward step(s) on the Bradley–Terry loss
with the demonstration preferred over each generation (optionally mixed with real preference pairs); policy
step(s) of RLOO on r_φ − β_KL·KL(π_θ || π_init) with the leave-one-out baseline. The official code runs APA
with the KL term multiplied by zero; we use a real per-token KL penalty (PAPER.md).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import GenerationConfig, RunConfig
from rewardsft.data import Renderer, TokenizedExample, load_pairs
from rewardsft.data.collate import batch_on
from rewardsft.errors import ConfigError
from rewardsft.generation import (
    Generation,
    as_example,
    end_of_turn_ids,
    generate,
    generation_stats,
    truncation_warning,
)
from rewardsft.layout import REWARD_MODEL
from rewardsft.logprobs import model_token_logps, sequence_logps
from rewardsft.losses import (
    kl_penalised_rewards,
    normalise_rewards,
    reward_bt_loss,
    rloo_advantages,
    rloo_policy_loss,
    sequence_kl,
)
from rewardsft.model_card import write_model_card
from rewardsft.models import apply_lora, disable_dropout, eval_mode, is_peft, load_causal_lm, resolve_dtype
from rewardsft.recipes.common import RecipeStart, eval_batch, start_recipe
from rewardsft.reward import load_reward_model, rm_scores, save_reward_model, score_examples
from rewardsft.training.batches import epoch_permutation
from rewardsft.training.checkpoint import Optimizers
from rewardsft.training.optim import build_optimizer, build_scheduler
from rewardsft.training.run import Run, StepTimer
from rewardsft.training.step import (
    derive_seed,
    log_due,
    micro_batch_context,
    optimizer_step,
    reduce_metrics,
)

REWARD_ADAPTER = "reward_adapter"


@dataclass
class Rollout:
    """k samples for each of P prompts, sample j of prompt p at row p*k + j."""

    demos: list[TokenizedExample]
    """(P,) the demonstrations of the prompts."""
    gens: list[TokenizedExample]
    """(P*k,) prompt + sampled response."""
    old_logps: torch.Tensor
    """(P*k,) sequence log-probs under the sampling policy."""
    kl: torch.Tensor
    """(P*k,) KL estimate to the initial policy."""
    entropy: float
    """Mean −log π of the sampled tokens: a Monte-Carlo estimate of the per-token entropy (at temperature 1)."""
    stats: dict[str, float]


def train_rft(config: RunConfig) -> Path:
    """Train with RFT; returns ``final/`` (the policy). The reward model is saved to ``reward_model/``."""
    rc, tc = config.rft, config.train
    start = start_recipe(config, load_extra=lambda renderer: load_preference_pairs(renderer, config))
    run, tokenizer, policy, preference = start.run, start.tokenizer, start.model, start.extra
    reward_model = build_reward_model(start, config)
    reference = build_reference(start, config)

    policy = run.prepare(policy)
    policy_opt = build_optimizer(policy.parameters(), config.optim)
    policy_sched = build_scheduler(policy_opt, config.optim, rc.iterations * max(rc.policy_steps, 1))
    rm_opt = build_optimizer(reward_model.parameters(), dataclasses.replace(config.optim, lr=config.reward_model.lr))
    rm_sched = build_scheduler(rm_opt, config.optim, rc.iterations * max(rc.reward_steps, 1))
    policy_opt = run.prepare_optimizer(policy_opt)
    optimizers: Optimizers = {"policy": (policy_opt, policy_sched), "reward_model": (rm_opt, rm_sched)}
    state = run.resume(optimizers, policy)

    pad_id = tokenizer.pad_token_id
    stop_ids = end_of_turn_ids(start.renderer, run.accelerator.unwrap_model(policy))
    spec = RolloutSpec.from_config(config, pad_id, stop_ids)
    if start.eval_data is not None and state["step"] == 0:
        # Step 0: how well the untrained reward model separates held-out demonstrations from generations.
        run.log(0, {"eval/rm_accuracy": held_out_rm_accuracy(run, policy, reward_model, start, spec, 0)})
    timer, warned = StepTimer(), False
    for iteration in run.progress(
        range(state["step"], rc.iterations), total=rc.iterations, initial=state["step"], desc="rft"
    ):
        prompts = iteration_prompts(len(start.train_data.tokenized), config, iteration, run)
        demos = [start.train_data.tokenized[i] for i in prompts]
        rollout = make_rollout(run, policy, reference, demos, spec, iteration)
        metrics = dict(rollout.stats)
        warning = truncation_warning(rollout.stats, config.generation.max_new_tokens)
        if warning and not warned:
            warned = True  # once per run: the share is logged every round as gen/max_tokens_share
            run.print(f"round {iteration + 1}: {warning}")
        for _ in range(rc.reward_steps):
            metrics |= reward_step(run, reward_model, rollout, preference, spec, iteration)
            stats = optimizer_step(None, reward_model.parameters(), rm_opt, rm_sched, tc.max_grad_norm, tc.on_nonfinite)
            metrics |= stats.metrics("rm")
        scores = torch.tensor(score_examples(reward_model, rollout.gens, spec.eval_batch_size, pad_id))
        for _ in range(rc.policy_steps):
            metrics |= policy_step(run.accelerator, policy, rollout, scores, spec)
            stats = optimizer_step(
                run.accelerator, policy.parameters(), policy_opt, policy_sched, tc.max_grad_norm, tc.on_nonfinite
            )
            metrics |= stats.metrics()
        gen_tokens = sum(len(g.response_ids) for g in rollout.gens)
        demo_tokens = sum(len(d.response_ids) for d in rollout.demos) * rc.samples_per_prompt
        # Response tokens through a backward pass this round: reward steps (demonstration + generation of every
        # pair) and policy steps (the generations). A count: summed over processes, where the rest is averaged.
        counts = {"train/tokens": rc.reward_steps * (demo_tokens + gen_tokens) + rc.policy_steps * gen_tokens}
        metrics |= {
            "policy/reward": float(scores.mean()),
            "policy/kl": float(rollout.kl.mean()),
            "policy/entropy": rollout.entropy,
        }
        step = iteration + 1
        if start.eval_data is not None and (step == rc.iterations or (tc.eval_every and step % tc.eval_every == 0)):
            metrics["eval/rm_accuracy"] = held_out_rm_accuracy(run, policy, reward_model, start, spec, step)
        metrics["time/iteration_s"] = timer.lap()
        if log_due(step, tc.log_every, step == rc.iterations, metrics):
            # Means over processes are the round's means: every process holds as many samples (rounds split evenly).
            run.log(step, reduce_metrics(run.accelerator, metrics) | reduce_metrics(run.accelerator, counts, "sum"))
        if run.checkpoint_due(step % tc.save_every == 0 or step == rc.iterations):
            run.save_checkpoint(
                policy, optimizers, {"step": step}, extra=lambda tmp: save_reward_weights(tmp, reward_model, tokenizer)
            )

    if run.is_main:
        save_reward_model(run.output_dir / REWARD_MODEL, reward_model, tokenizer)
        write_model_card(run.output_dir / REWARD_MODEL, config.to_dict(), run.output_dir.name, kind="reward_model")
    return run.save_final(policy, tokenizer)


@dataclass(frozen=True)
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
    stop_ids: list[int]
    kl_coef: float
    reward_norm: str
    reward_clip: float | None
    clip_ratio: float
    preference_weight: float

    @classmethod
    def from_config(cls, config: RunConfig, pad_id: int, stop_ids: list[int]) -> RolloutSpec:
        rc = config.rft
        return cls(
            rc.samples_per_prompt,
            config.data.max_length,
            config.train.batch_size,
            eval_batch(config),
            config.generation,
            config.seed,
            pad_id,
            stop_ids,
            rc.kl_coef,
            rc.reward_norm,
            rc.reward_clip,
            rc.clip_ratio,
            rc.preference_weight,
        )


def build_reward_model(start: RecipeStart, config: RunConfig) -> Any:
    """r_φ from ``reward_model.name_or_path`` or the policy's initial weights; from the checkpoint on resume."""
    run = start.run
    dtype = resolve_dtype(config.model.dtype, run.device)
    source: str | Path = config.reward_model.name_or_path or config.model.name_or_path
    adapter = run.checkpoint / REWARD_ADAPTER if run.checkpoint is not None else None
    if run.checkpoint is not None and not config.reward_model.lora:
        source = run.checkpoint / REWARD_MODEL
    # The policy's revision applies when r_φ starts from the policy's own weights.
    revision = config.model.revision if source == config.model.name_or_path else None
    model = load_reward_model(
        source, run.device, dtype, start.tokenizer.pad_token_id, config.model.trust_remote_code, revision
    )
    if model.config.vocab_size < len(start.tokenizer):
        raise ConfigError("reward_model.name_or_path must share the policy's tokenizer (its vocabulary is smaller)")
    if config.reward_model.lora:
        if adapter is not None and adapter.is_dir():
            import peft

            model = peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        else:
            lora = config.lora if config.train.dropout else dataclasses.replace(config.lora, dropout=0.0)
            model = apply_lora(model, lora, task_type="SEQ_CLS")
    if not config.train.dropout:
        disable_dropout(model)
    model.train()
    return model


def build_reference(start: RecipeStart, config: RunConfig) -> Any | None:
    """π_init for the KL penalty: None with LoRA (the adapter-disabled policy), else a frozen copy."""
    if is_peft(start.model):
        return None
    if start.run.checkpoint is None:
        reference = copy.deepcopy(start.model)
    else:
        reference = load_causal_lm(config.model, start.run.device)
    reference.eval().requires_grad_(False)
    return reference


def load_preference_pairs(renderer: Renderer, config: RunConfig) -> list[tuple[TokenizedExample, TokenizedExample]]:
    """Real (chosen, rejected) pairs for the reward step, rendered and truncated exactly like the gap eval."""
    rc, dc = config.rft, config.data
    if rc.preference_path is None or rc.preference_weight == 0:
        return []
    pairs = load_pairs(
        rc.preference_path,
        rc.preference_split,
        renderer,
        max_length=dc.max_length,
        max_prompt_length=dc.max_prompt_length,
    )
    return list(zip(pairs.chosen, pairs.rejected, strict=True))


def iteration_prompts(n_examples: int, config: RunConfig, iteration: int, run: Run) -> list[int]:
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
    run: Run, policy: Any, reference: Any | None, demos: list[TokenizedExample], spec: RolloutSpec, iteration: int
) -> Rollout:
    """Sample k responses per prompt; log-probs under the sampler and the initial policy, computed once."""
    k = spec.samples_per_prompt
    unwrapped = run.accelerator.unwrap_model(policy)
    prompts = [d for d in demos for _ in range(k)]
    generations, gens = sample_responses(run, policy, prompts, spec, "rft/generate", iteration)
    old, kl = [], []
    entropy_sum, n_tokens = 0.0, 0
    with eval_mode(unwrapped):
        for start in range(0, len(gens), spec.eval_batch_size):
            batch = batch_on(gens[start : start + spec.eval_batch_size], spec.pad_id, run.device)
            tokens = model_token_logps(unwrapped, **batch)
            if reference is None:
                with unwrapped.disable_adapter():
                    ref_tokens = model_token_logps(unwrapped, **batch)
            else:
                ref_tokens = model_token_logps(reference, **batch)
            old.append(sequence_logps(tokens))
            kl.append(sequence_kl(tokens.logps, ref_tokens.logps, tokens.mask))
            entropy_sum += float(-(tokens.logps * tokens.mask).sum())
            n_tokens += int(tokens.mask.sum())
    stats = generation_stats(generations, [d.response_ids for d in prompts])
    return Rollout(demos, gens, torch.cat(old), torch.cat(kl), entropy_sum / max(n_tokens, 1), stats)


def sample_responses(
    run: Run, policy: Any, prompts: list[TokenizedExample], spec: RolloutSpec, purpose: str, step: int
) -> tuple[list[Generation], list[TokenizedExample]]:
    """One sample per prompt from the current policy, seeded per purpose, step and process; also as examples
    (prompt + response cut to ``data.max_length``) ready to score or train on."""
    generations = generate(
        run.accelerator.unwrap_model(policy),
        [p.prompt_ids for p in prompts],
        spec.generation,
        pad_id=spec.pad_id,
        eos_ids=spec.stop_ids,
        seed=derive_seed(spec.seed, purpose, step, run.rank),
    )
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
    for start in range(0, len(pairs), spec.batch_size):
        chunk = pairs[start : start + spec.batch_size]
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


def policy_step(
    accelerator: Any, policy: Any, rollout: Rollout, scores: torch.Tensor, spec: RolloutSpec
) -> dict[str, float]:
    """Backpropagate one RLOO step over the whole rollout, micro-batched; gradients sync on the last one."""
    device = accelerator.device
    rewards = kl_penalised_rewards(scores.to(device), rollout.kl.to(device), spec.kl_coef)
    rewards = normalise_rewards(rewards, spec.reward_norm, spec.reward_clip, round_moments(accelerator, rewards))
    advantages = rloo_advantages(rewards.view(-1, spec.samples_per_prompt)).view(-1)
    n, size, total = len(rollout.gens), spec.batch_size, 0.0
    for start in range(0, n, size):
        ids = list(range(start, min(start + size, n)))
        with micro_batch_context(accelerator, policy, last=start + size >= n):
            logps = sequence_logps(
                model_token_logps(policy, **batch_on([rollout.gens[i] for i in ids], spec.pad_id, device))
            )
            loss = rloo_policy_loss(logps, rollout.old_logps[ids].to(device), advantages[ids], spec.clip_ratio)
            accelerator.backward(loss * len(ids) / n)
        total += float(loss.detach()) * len(ids) / n
    return {"policy/loss": total}


def round_moments(accelerator: Any, rewards: torch.Tensor) -> tuple[float, float] | None:
    """Mean and (unbiased) std of the whole round's rewards over every process; None in one process."""
    if accelerator.num_processes == 1:
        return None
    local = {"n": rewards.numel(), "sum": float(rewards.sum()), "squares": float((rewards.double() ** 2).sum())}
    total = reduce_metrics(accelerator, local, reduction="sum")
    mean = total["sum"] / total["n"]
    variance = (total["squares"] - total["n"] * mean**2) / max(total["n"] - 1, 1.0)
    return mean, max(variance, 0.0) ** 0.5


def held_out_rm_accuracy(
    run: Run, policy: Any, reward_model: Any, start: RecipeStart, spec: RolloutSpec, step: int
) -> float:
    """Share of held-out prompts where r_φ scores the demonstration above the current policy's sample."""
    assert start.eval_data is not None
    demos = start.eval_data.tokenized[run.rank :: run.world_size]
    _, gens = sample_responses(run, policy, demos, spec, "rft/held-out", step)
    demo_scores = score_examples(reward_model, demos, spec.eval_batch_size, spec.pad_id)
    gen_scores = score_examples(reward_model, gens, spec.eval_batch_size, spec.pad_id)
    wins = sum(d > g for d, g in zip(demo_scores, gen_scores, strict=True))
    totals = reduce_metrics(run.accelerator, {"wins": wins, "n": len(demos)}, reduction="sum")
    return totals["wins"] / max(totals["n"], 1.0)


def save_reward_weights(tmp: Path, reward_model: Any, tokenizer: Any) -> None:
    """The reward model as it trains, into a checkpoint: LoRA as adapter + head (resumable), else merged."""
    if is_peft(reward_model):
        reward_model.save_pretrained(str(tmp / REWARD_ADAPTER))
    else:
        save_reward_model(tmp / REWARD_MODEL, reward_model, tokenizer)
