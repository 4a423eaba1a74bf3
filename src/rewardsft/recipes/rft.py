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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import RunConfig
from rewardsft.data import Renderer, TokenizedExample, collate
from rewardsft.errors import ConfigError
from rewardsft.eval.logprob_gap import GapSettings, tokenize_pairs
from rewardsft.generation import generate, generation_stats
from rewardsft.logprobs import model_token_logps, sequence_logps
from rewardsft.losses import (
    kl_penalised_rewards,
    normalise_rewards,
    reward_bt_loss,
    rloo_advantages,
    rloo_policy_loss,
    sequence_kl,
)
from rewardsft.models import apply_lora, is_peft, load_causal_lm, resolve_dtype
from rewardsft.recipes.common import RecipeStart, eval_batch, start_recipe
from rewardsft.reward import load_reward_model, rm_scores, score_examples
from rewardsft.training.batches import epoch_permutation
from rewardsft.training.optim import build_optimizer, build_scheduler
from rewardsft.training.run import Run, StepTimer

REWARD_DIR = "reward_model"
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
    rc = config.rft
    start = start_recipe(config, load_extra=lambda renderer: load_preference_pairs(renderer, config))
    run, tokenizer, policy, preference = start.run, start.tokenizer, start.model, start.extra
    reward_model = build_reward_model(start, config)
    reference = build_reference(start, config)

    policy_opt = build_optimizer(policy.parameters(), config.optim)
    policy_sched = build_scheduler(policy_opt, config.optim, rc.iterations * max(rc.policy_steps, 1))
    rm_opt = build_optimizer(reward_model.parameters(), dataclasses.replace(config.optim, lr=config.reward_model.lr))
    rm_sched = build_scheduler(rm_opt, config.optim, rc.iterations * max(rc.reward_steps, 1))
    policy, policy_opt = run.accelerator.prepare(policy, policy_opt)
    state = run.resume_state()
    run.restore_optimizer(policy_opt, policy_sched)
    if run.checkpoint is not None:
        restore_reward_optimizer(run.checkpoint, rm_opt, rm_sched)

    pad_id = tokenizer.pad_token_id
    if start.eval_data is not None and state["step"] == 0:
        # Step 0: how well the untrained reward model separates held-out demonstrations from generations.
        run.log(0, {"eval/rm_accuracy": held_out_rm_accuracy(run, policy, reward_model, start, config, -1)})
    timer = StepTimer()
    for iteration in run.progress(
        range(state["step"], rc.iterations), total=rc.iterations, initial=state["step"], desc="rft"
    ):
        prompts = iteration_prompts(len(start.train_data.tokenized), config, iteration, run)
        demos = [start.train_data.tokenized[i] for i in prompts]
        rollout = make_rollout(run, policy, reference, demos, tokenizer, config, iteration)
        metrics = dict(rollout.stats)
        for _ in range(rc.reward_steps):
            metrics.update(reward_step(run, reward_model, rollout, preference, config, pad_id, iteration))
            rm_opt.step()
            rm_sched.step()
            rm_opt.zero_grad(set_to_none=True)
        scores = torch.tensor(score_examples(reward_model, rollout.gens, eval_batch(config), pad_id))
        for _ in range(rc.policy_steps):
            metrics.update(policy_step(run, policy, rollout, scores, config, pad_id))
            metrics["train/lr"] = float(policy_sched.get_last_lr()[0])
            policy_opt.step()
            policy_sched.step()
            policy_opt.zero_grad(set_to_none=True)
        metrics.update(
            {
                "policy/reward": float(scores.mean()),
                "policy/kl": float(rollout.kl.mean()),
                "policy/entropy": rollout.entropy,
            }
        )
        if start.eval_data is not None:
            metrics["eval/rm_accuracy"] = held_out_rm_accuracy(run, policy, reward_model, start, config, iteration)
        metrics["time/iteration_s"] = timer.lap()
        step = iteration + 1
        run.log(step, run_mean(run, metrics))
        if step % config.train.save_every == 0 or step == rc.iterations:
            run.save_checkpoint(
                policy,
                policy_opt,
                policy_sched,
                {"step": step},
                extra=lambda tmp: save_reward_state(tmp, reward_model, rm_opt, rm_sched, tokenizer),
            )

    if run.is_main:
        save_reward_model(run.output_dir / REWARD_DIR, reward_model, tokenizer)
    return run.save_final(policy, tokenizer)


def build_reward_model(start: RecipeStart, config: RunConfig) -> Any:
    """r_φ from ``reward_model.name_or_path`` or the policy's initial weights; from the checkpoint on resume."""
    run = start.run
    dtype = resolve_dtype(config.model.dtype, run.device)
    source: str | Path = config.reward_model.name_or_path or config.model.name_or_path
    adapter = run.checkpoint / REWARD_ADAPTER if run.checkpoint is not None else None
    if run.checkpoint is not None and not config.reward_model.lora:
        source = run.checkpoint / REWARD_DIR
    model = load_reward_model(source, run.device, dtype, start.tokenizer.pad_token_id, config.model.trust_remote_code)
    if model.config.vocab_size < len(start.tokenizer):
        raise ConfigError("reward_model.name_or_path must share the policy's tokenizer (its vocabulary is smaller)")
    if config.reward_model.lora:
        if adapter is not None and adapter.is_dir():
            import peft

            model = peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        else:
            model = apply_lora(model, config.lora, task_type="SEQ_CLS")
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
    settings = GapSettings(split=rc.preference_split, max_length=dc.max_length, max_prompt_length=dc.max_prompt_length)
    chosen, rejected, _, _ = tokenize_pairs(rc.preference_path, renderer, settings)
    return list(zip(chosen, rejected, strict=True))


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
    run: Run,
    policy: Any,
    reference: Any | None,
    demos: list[TokenizedExample],
    tokenizer: Any,
    config: RunConfig,
    iteration: int,
) -> Rollout:
    """Sample k responses per prompt; log-probs under the sampler and the initial policy, computed once."""
    k = config.rft.samples_per_prompt
    unwrapped = run.accelerator.unwrap_model(policy)
    prompts = [d.prompt_ids for d in demos for _ in range(k)]
    seed = config.seed * 7919 + iteration * 104729 + run.rank
    generations = generate(
        unwrapped,
        prompts,
        config.generation,
        pad_id=tokenizer.pad_token_id,
        eos_ids=[tokenizer.eos_token_id],
        seed=seed,
    )
    room = config.data.max_length
    gens = [TokenizedExample(p, g.response_ids[: room - len(p)]) for p, g in zip(prompts, generations, strict=True)]
    old, kl, entropy_parts = [], [], []
    was_training = unwrapped.training
    unwrapped.eval()
    for start in range(0, len(gens), eval_batch(config)):
        batch = {
            key: v.to(run.device)
            for key, v in collate(gens[start : start + eval_batch(config)], tokenizer.pad_token_id).items()
        }
        tokens = model_token_logps(unwrapped, **batch)
        if reference is None:
            with unwrapped.disable_adapter():
                ref_tokens = model_token_logps(unwrapped, **batch)
        else:
            ref_tokens = model_token_logps(reference, **batch)
        old.append(sequence_logps(tokens))
        kl.append(sequence_kl(tokens.logps, ref_tokens.logps, tokens.mask))
        entropy_parts.append((-(tokens.logps * tokens.mask).sum(), tokens.mask.sum()))
    unwrapped.train(was_training)
    entropy = float(sum(e[0] for e in entropy_parts) / max(sum(float(e[1]) for e in entropy_parts), 1.0))
    stats = generation_stats(generations, [d.response_ids for d in demos for _ in range(k)])
    return Rollout(demos, gens, torch.cat(old), torch.cat(kl), entropy, stats)


def reward_step(
    run: Run, reward_model: Any, rollout: Rollout, preference: list[Any], config: RunConfig, pad_id: int, iteration: int
) -> dict[str, float]:
    """Accumulate one BT step over every (demonstration, generation) pair of the round (+ preference pairs)."""
    k = config.rft.samples_per_prompt
    pairs = [(rollout.demos[i // k], gen) for i, gen in enumerate(rollout.gens)]
    totals = torch.zeros(3, device=run.device)
    size = config.train.batch_size
    for start in range(0, len(pairs), size):
        chunk = pairs[start : start + size]
        terms = bt_terms(reward_model, chunk, pad_id, run.device)
        loss = terms.loss.sum() / len(pairs)
        if preference:
            pick = [preference[(iteration * len(pairs) + start + j) % len(preference)] for j in range(len(chunk))]
            loss = loss + config.rft.preference_weight * bt_terms(
                reward_model, pick, pad_id, run.device
            ).loss.sum() / len(pairs)
        loss.backward()
        totals += torch.stack([terms.loss.detach().sum(), terms.accuracy.sum(), terms.margin.sum()]) / len(pairs)
    run.average_gradients(reward_model)
    return {"rm/loss": float(totals[0]), "rm/accuracy": float(totals[1]), "rm/margin": float(totals[2])}


def bt_terms(
    reward_model: Any, pairs: list[tuple[TokenizedExample, TokenizedExample]], pad_id: int, device: torch.device
) -> Any:
    batch = collate([p[0] for p in pairs] + [p[1] for p in pairs], pad_id)
    scores = rm_scores(reward_model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return reward_bt_loss(scores[: len(pairs)], scores[len(pairs) :])


def policy_step(
    run: Run, policy: Any, rollout: Rollout, scores: torch.Tensor, config: RunConfig, pad_id: int
) -> dict[str, float]:
    """Accumulate one RLOO step over the whole rollout."""
    rc = config.rft
    rewards = kl_penalised_rewards(scores.to(run.device), rollout.kl.to(run.device), rc.kl_coef)
    rewards = normalise_rewards(rewards, rc.reward_norm, rc.reward_clip)
    advantages = rloo_advantages(rewards.view(-1, rc.samples_per_prompt)).view(-1)
    n, size, total = len(rollout.gens), config.train.batch_size, 0.0
    for start in range(0, n, size):
        ids = list(range(start, min(start + size, n)))
        batch = {key: v.to(run.device) for key, v in collate([rollout.gens[i] for i in ids], pad_id).items()}
        with nullcontext() if start + size >= n else run.accelerator.no_sync(policy):
            logps = sequence_logps(model_token_logps(policy, **batch))
            loss = rloo_policy_loss(logps, rollout.old_logps[ids].to(run.device), advantages[ids], rc.clip_ratio)
            run.accelerator.backward(loss * len(ids) / n)
        total += float(loss.detach()) * len(ids) / n
    return {"policy/loss": total}


def held_out_rm_accuracy(
    run: Run, policy: Any, reward_model: Any, start: RecipeStart, config: RunConfig, iteration: int
) -> float:
    """Share of held-out prompts where r_φ scores the demonstration above the current policy's sample."""
    assert start.eval_data is not None
    demos = start.eval_data.tokenized[run.rank :: run.world_size]
    unwrapped = run.accelerator.unwrap_model(policy)
    generations = generate(
        unwrapped,
        [d.prompt_ids for d in demos],
        config.generation,
        pad_id=start.tokenizer.pad_token_id,
        eos_ids=[start.tokenizer.eos_token_id],
        seed=config.seed + 31 * iteration + run.rank,
    )
    gens = [
        TokenizedExample(d.prompt_ids, g.response_ids[: config.data.max_length - len(d.prompt_ids)])
        for d, g in zip(demos, generations, strict=True)
    ]
    pad = start.tokenizer.pad_token_id
    demo_scores = score_examples(reward_model, demos, eval_batch(config), pad)
    gen_scores = score_examples(reward_model, gens, eval_batch(config), pad)
    return sum(d > g for d, g in zip(demo_scores, gen_scores, strict=True)) / max(len(demos), 1)


def run_mean(run: Run, metrics: dict[str, float]) -> dict[str, float]:
    if run.world_size == 1:
        return metrics
    names = sorted(metrics)
    values = run.accelerator.reduce(torch.tensor([metrics[n] for n in names], device=run.device), reduction="mean")
    return dict(zip(names, values.tolist(), strict=True))


def save_reward_model(out: Path, reward_model: Any, tokenizer: Any) -> None:
    """``AutoModelForSequenceClassification``-loadable (LoRA merged) with the tokenizer."""
    model = reward_model
    if is_peft(model):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def save_reward_state(tmp: Path, reward_model: Any, optimizer: Any, scheduler: Any, tokenizer: Any) -> None:
    """The reward model as it trains (LoRA: adapter + head, resumable) and its optimiser state."""
    if is_peft(reward_model):
        reward_model.save_pretrained(str(tmp / REWARD_ADAPTER))
    else:
        save_reward_model(tmp / REWARD_DIR, reward_model, tokenizer)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "rm_optimizer.pt")


def restore_reward_optimizer(checkpoint: Path, optimizer: Any, scheduler: Any) -> None:
    state = torch.load(checkpoint / "rm_optimizer.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
