"""Supervised fine-tuning: maximum likelihood on the demonstrations, prompt tokens masked."""

from __future__ import annotations

from pathlib import Path

from rewardsft.config import RunConfig
from rewardsft.logprobs import check_block_mask, dense_mask_warning
from rewardsft.recipes.common import start_recipe
from rewardsft.steps.sft import accumulate_sft_step
from rewardsft.training.batches import plan_steps, total_steps
from rewardsft.training.optim import build_optimizer, build_scheduler
from rewardsft.training.run import StepTimer
from rewardsft.training.step import log_due, optimizer_step


def train_sft(config: RunConfig) -> Path:
    """Train with SFT; returns the ``final/`` directory."""
    start = start_recipe(config)
    run, tokenizer, model = start.run, start.tokenizer, start.model
    train_data, eval_data = start.train_data, start.eval_data
    model, optimizer = run.prepare(model, lambda params: build_optimizer(params, config.optim))
    if config.train.packing:
        check_block_mask(model, "train.packing", "set train.packing=false")
        run.warn(dense_mask_warning(run.device, "train.packing"))
    tc = config.train
    n_steps = total_steps(
        len(train_data.tokenized), tc.batch_size, tc.grad_accum, run.world_size, tc.epochs, tc.max_steps
    )
    scheduler = build_scheduler(run.engine.base_optimizer(optimizer), config.optim, n_steps)
    optimizers = {"policy": (optimizer, scheduler)}
    start_step = run.resume(optimizers, model)["step"]

    plan = plan_steps(
        len(train_data.tokenized),
        batch_size=tc.batch_size,
        grad_accum=tc.grad_accum,
        n_steps=n_steps,
        seed=config.seed,
        rank=run.rank,
        world_size=run.world_size,
        start_step=start_step,
    )
    timer = StepTimer()
    for batches in run.progress(plan, total=n_steps, initial=start_step, desc="sft"):
        micro = [[train_data.tokenized[i] for i in idx] for idx in batches.micro_batches]
        width = config.data.max_length if tc.packing else None
        metrics = accumulate_sft_step(run.engine, model, micro, tokenizer.pad_token_id, width)
        stats = optimizer_step(run.engine, model.parameters(), optimizer, scheduler, tc.max_grad_norm, tc.on_nonfinite)
        step = batches.step + 1
        metrics |= {
            **stats.metrics(),
            "train/epoch": batches.epoch,
            "time/step_s": timer.lap(),
        }
        if eval_data is not None and tc.eval_every and step % tc.eval_every == 0:
            metrics["eval/loss"] = run.eval_nll(
                model, eval_data.tokenized, config.train.eval_batch, tokenizer.pad_token_id
            )
        if log_due(step, tc.log_every, step == n_steps, metrics):
            run.log(step, metrics)
        if run.checkpoint_due(step % tc.save_every == 0 or step == n_steps):
            run.save_checkpoint(model, optimizers, {"step": step})

    if eval_data is not None:
        final_eval = run.eval_nll(model, eval_data.tokenized, config.train.eval_batch, tokenizer.pad_token_id)
        run.log(n_steps, {"eval/loss": final_eval})
    return run.save_final(model, tokenizer)
