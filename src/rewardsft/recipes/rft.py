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
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import RFTConfig
from rewardsft.data import Renderer, TokenizedExample, load_pairs
from rewardsft.errors import ConfigError
from rewardsft.generation import end_of_turn_ids, truncation_warning
from rewardsft.layout import REWARD_ADAPTER, REWARD_MODEL
from rewardsft.logprobs import dense_mask_warning
from rewardsft.model_card import write_model_card
from rewardsft.models import apply_lora, disable_dropout, is_peft, load_causal_lm, resolve_dtype
from rewardsft.recipes.common import RecipeStart, start_recipe
from rewardsft.reward import load_reward_model, save_reward_model, score_examples
from rewardsft.steps.rollout import (
    RFT_RULES,
    RolloutSpec,
    held_out_rm_accuracy,
    iteration_prompts,
    make_rollout,
    policy_step,
    reward_step,
    rollout_forward,
    save_reward_weights,
)
from rewardsft.training.checkpoint import Optimizers
from rewardsft.training.optim import build_optimizer, build_scheduler
from rewardsft.training.run import StepTimer
from rewardsft.training.step import log_due, optimizer_step


def train_rft(config: RFTConfig) -> Path:
    """Train with RFT; returns ``final/`` (the policy). The reward model is saved to ``reward_model/``."""
    rc, tc = config.rft, config.train
    start = start_recipe(config, load_extra=lambda renderer: load_preference_pairs(renderer, config), rules=RFT_RULES)
    run, tokenizer, policy, preference = start.run, start.tokenizer, start.model, start.extra
    reward_model = build_reward_model(start, config)
    reference = build_reference(start, config)

    policy, policy_opt = run.prepare(policy, lambda params: build_optimizer(params, config.optim))
    shared = rollout_forward(config, policy, reward_model) == "shared"
    if shared:
        run.warn(dense_mask_warning(run.device, "rft.rollout_forward=shared"))
    policy_sched = build_scheduler(
        run.engine.base_optimizer(policy_opt), config.optim, rc.iterations * max(rc.policy_steps, 1)
    )
    rm_opt = build_optimizer(reward_model.parameters(), dataclasses.replace(config.optim, lr=config.reward_model.lr))
    rm_sched = build_scheduler(rm_opt, config.optim, rc.iterations * max(rc.reward_steps, 1))
    optimizers: Optimizers = {"policy": (policy_opt, policy_sched), "reward_model": (rm_opt, rm_sched)}
    state = run.resume(optimizers, policy)

    pad_id = tokenizer.pad_token_id
    stop_ids = end_of_turn_ids(start.renderer, run.engine.unwrap(policy))
    spec = RolloutSpec.from_config(config, pad_id, stop_ids, shared)
    held_out = start.eval_data.tokenized if start.eval_data is not None else []
    if start.eval_data is not None and state["step"] == 0:
        # Step 0: how well the untrained reward model separates held-out demonstrations from generations.
        run.log(0, {"eval/rm_accuracy": held_out_rm_accuracy(run, policy, reward_model, held_out, spec, 0)})
    timer, warned = StepTimer(), False
    for iteration in run.progress(
        range(state["step"], rc.iterations), total=rc.iterations, initial=state["step"], desc="rft"
    ):
        prompts = iteration_prompts(len(start.train_data.tokenized), config, iteration, run)
        demos = [start.train_data.tokenized[i] for i in prompts]
        rollout = make_rollout(run, policy, reference, demos, spec, iteration, logps=rc.policy_steps > 0)
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
            metrics |= policy_step(run.engine, policy, rollout, scores, spec)
            stats = optimizer_step(
                run.engine, policy.parameters(), policy_opt, policy_sched, tc.max_grad_norm, tc.on_nonfinite
            )
            metrics |= stats.metrics()
        gen_tokens = sum(len(g.response_ids) for g in rollout.gens)
        demo_tokens = sum(len(d.response_ids) for d in rollout.demos) * rc.samples_per_prompt
        # Response tokens through a backward pass this round: reward steps (demonstration + generation of every
        # pair) and policy steps (the generations). A count: summed over processes, where the rest is averaged.
        counts = {"train/tokens": rc.reward_steps * (demo_tokens + gen_tokens) + rc.policy_steps * gen_tokens}
        metrics["policy/reward"] = float(scores.mean())
        if rollout.kl is not None and rollout.entropy is not None:
            metrics |= {"policy/kl": float(rollout.kl.mean()), "policy/entropy": rollout.entropy}
        step = iteration + 1
        if start.eval_data is not None and (step == rc.iterations or (tc.eval_every and step % tc.eval_every == 0)):
            metrics["eval/rm_accuracy"] = held_out_rm_accuracy(run, policy, reward_model, held_out, spec, step)
        metrics["time/iteration_s"] = timer.lap()
        if log_due(step, tc.log_every, step == rc.iterations, metrics):
            # Means over processes are the round's means: every process holds as many samples (rounds split evenly).
            run.log(step, run.engine.reduce(metrics) | run.engine.reduce(counts, "sum"))
        if run.checkpoint_due(step % tc.save_every == 0 or step == rc.iterations):
            run.save_checkpoint(
                policy, optimizers, {"step": step}, extra=lambda tmp: save_reward_weights(tmp, reward_model, tokenizer)
            )

    if run.is_main:
        save_reward_model(run.output_dir / REWARD_MODEL, reward_model, tokenizer)
        write_model_card(run.output_dir / REWARD_MODEL, config.to_dict(), run.output_dir.name, kind="reward_model")
    return run.save_final(policy, tokenizer)


def build_reward_model(start: RecipeStart, config: RFTConfig) -> Any:
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


def build_reference(start: RecipeStart, config: RFTConfig) -> Any | None:
    """π_init for the KL penalty: None with LoRA (the adapter-disabled policy) or with no policy step, else a frozen
    copy."""
    if is_peft(start.model) or config.rft.policy_steps == 0:
        return None
    if start.run.checkpoint is None:
        reference = copy.deepcopy(start.model)
    else:
        reference = load_causal_lm(config.model, start.run.device)
    reference.eval().requires_grad_(False)
    return reference


def load_preference_pairs(renderer: Renderer, config: RFTConfig) -> list[tuple[TokenizedExample, TokenizedExample]]:
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
