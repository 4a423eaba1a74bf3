"""IRFT (the paper's Algorithm 2): staged self-generation against a per-stage snapshot. SPIN is T=1.

For each epoch, the shuffled demonstrations are split into T = ``irft.stages`` chunks. Stage t snapshots the
policy (θ_t), samples one response per prompt of chunk t with it, then trains the contrastive loss
ℓ(β·[(log π_θ(y) − log π_θ(ỹ)) − (log π_ref(y) − log π_ref(ỹ))]) on the chunk's (prompt, demo, generation).
"""

from __future__ import annotations

from pathlib import Path

from rewardsft.config import IRFTConfig
from rewardsft.generation import end_of_turn_ids, make_sampler
from rewardsft.logprobs import check_block_mask, dense_mask_warning
from rewardsft.recipes.common import start_recipe
from rewardsft.steps.pairs import PairLossSpec, accumulate_irft_step
from rewardsft.steps.stages import (
    IRFT_RULES,
    overfit_warning,
    overfitting,
    plan_stages,
    stage_optimizers,
    stage_pairs,
    take_snapshot,
)
from rewardsft.training.batches import plan_steps
from rewardsft.training.checkpoint import Optimizers
from rewardsft.training.optim import build_optimizer
from rewardsft.training.run import StepTimer
from rewardsft.training.step import derive_seed, log_due, optimizer_step


def train_irft(config: IRFTConfig) -> Path:
    """Train with IRFT; returns the ``final/`` directory."""
    ic, tc = config.irft, config.train
    start = start_recipe(config, rules=IRFT_RULES)
    run, tokenizer, model, renderer = start.run, start.tokenizer, start.model, start.renderer
    train_data, eval_data = start.train_data, start.eval_data
    stages = plan_stages(len(train_data.tokenized), config, run.world_size)
    n_steps = stages[-1].first_step + stages[-1].steps
    state = run.resume_state()
    model, first_optimizer = run.prepare(model, lambda params: build_optimizer(params, config.optim))
    if ic.pair_forward == "shared":
        check_block_mask(model, "irft.pair_forward=shared", "use irft.pair_forward=joint or split")
    spec = PairLossSpec.from_config(config, model)
    run.print(f"irft: pair forward {spec.pair_forward}")
    if spec.pair_forward == "shared":
        run.warn(dense_mask_warning(run.device, "irft.pair_forward=shared"))
    optimizers: Optimizers = {}
    pad_id = tokenizer.pad_token_id
    sampler = make_sampler(config.generation, pad_id, end_of_turn_ids(renderer, run.engine.unwrap(model)))
    for stage in stages:
        if stage.first_step + stage.steps <= state["step"]:
            continue  # finished before the checkpoint
        resuming_in_stage = state["step"] > stage.first_step
        optimizers = stage_optimizers(run, model, first_optimizer, config, stage, n_steps, optimizers, state["step"])
        optimizer, scheduler = optimizers["policy"]

        examples = [train_data.tokenized[i] for i in stage.example_ids]
        pairs = stage_pairs(run, model, stage, examples, tokenizer, config, renderer, sampler)
        snapshot = take_snapshot(run, model, stage, pairs, config, pad_id, resuming_in_stage, spec.pair_forward)
        done = max(state["step"] - stage.first_step, 0)
        plan = plan_steps(
            len(pairs),
            batch_size=tc.batch_size,
            grad_accum=tc.grad_accum,
            n_steps=stage.steps,
            seed=derive_seed(config.seed, "irft/stage-order", stage.index),
            rank=run.rank,
            world_size=run.world_size,
            start_step=done,
        )
        warned, timer = False, StepTimer()
        for batches in run.progress(plan, total=stage.steps, initial=done, desc=f"irft {stage.name}"):
            metrics = accumulate_irft_step(run.engine, model, snapshot, pairs, batches.micro_batches, pad_id, spec)
            stats = optimizer_step(
                run.engine, model.parameters(), optimizer, scheduler, tc.max_grad_norm, tc.on_nonfinite
            )
            step = stage.first_step + batches.step + 1
            metrics |= {
                **stats.metrics(),
                "irft/stage": stage.index + 1,
                "time/step_s": timer.lap(),
            }
            if not warned and overfitting(metrics, last_stage=stage is stages[-1]):
                warned = True
                metrics["irft/overfit_warning"] = 1.0
                run.print(overfit_warning(stage, batches.step + 1, metrics["irft/gen_logratio_per_token"]))
            if eval_data is not None and tc.eval_every and step % tc.eval_every == 0:
                metrics["eval/loss"] = run.eval_nll(model, eval_data.tokenized, config.train.eval_batch, pad_id)
            if log_due(step, tc.log_every, batches.step + 1 == stage.steps, metrics):
                run.log(step, metrics)
            if run.checkpoint_due(step % tc.save_every == 0 or batches.step + 1 == stage.steps):
                checkpoint_state = {"step": step, "stage": stage.index + 1}
                run.save_checkpoint(model, optimizers, checkpoint_state, with_base=ic.snapshot == "lora")
        state = {"step": stage.first_step + stage.steps}
        del snapshot

    if eval_data is not None:
        run.log(n_steps, {"eval/loss": run.eval_nll(model, eval_data.tokenized, config.train.eval_batch, pad_id)})
    # snapshot=lora merges every stage's adapter into the base: the last adapter alone would not reproduce the
    # model on the base it names, so only final/ (merged) is exported.
    return run.save_final(model, tokenizer, export_adapter=ic.snapshot != "lora")
