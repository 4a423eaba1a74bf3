"""Supervised fine-tuning: maximum likelihood on the demonstrations, prompt tokens masked."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rewardsft.config import RunConfig
from rewardsft.data import collate
from rewardsft.logprobs import model_token_logps
from rewardsft.losses import sft_nll
from rewardsft.recipes.common import eval_batch, start_recipe
from rewardsft.training.batches import plan_steps, total_steps
from rewardsft.training.optim import build_optimizer, build_scheduler
from rewardsft.training.run import Run, StepTimer


def train_sft(config: RunConfig) -> Path:
    """Train with SFT; returns the ``final/`` directory."""
    start = start_recipe(config)
    run, tokenizer, model = start.run, start.tokenizer, start.model
    train_data, eval_data = start.train_data, start.eval_data
    optimizer = build_optimizer(model.parameters(), config.optim)
    tc = config.train
    n_steps = total_steps(
        len(train_data.tokenized), tc.batch_size, tc.grad_accum, run.world_size, tc.epochs, tc.max_steps
    )
    scheduler = build_scheduler(optimizer, config.optim, n_steps)
    model, optimizer = run.accelerator.prepare(model, optimizer)
    start_step = run.resume(optimizer, scheduler)["step"]

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
        loss, n_tokens = accumulate_sft_step(run, model, micro, tokenizer.pad_token_id)
        grad_norm = run.accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm or float("inf"))
        lr = float(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step = batches.step + 1
        metrics = {
            "train/loss": loss,
            "train/grad_norm": float(grad_norm),
            "train/lr": lr,
            "train/tokens": n_tokens,
            "train/epoch": batches.epoch,
            "time/step_s": timer.lap(),
        }
        if eval_data is not None and tc.eval_every and step % tc.eval_every == 0:
            metrics["eval/loss"] = run.eval_nll(model, eval_data.tokenized, eval_batch(config), tokenizer.pad_token_id)
        if step % tc.log_every == 0 or step == n_steps:
            run.log(step, metrics)
        if step % tc.save_every == 0 or step == n_steps:
            run.save_checkpoint(model, optimizer, scheduler, {"step": step})

    if eval_data is not None:
        final_eval = run.eval_nll(model, eval_data.tokenized, eval_batch(config), tokenizer.pad_token_id)
        run.log(n_steps, {"eval/loss": final_eval})
    return run.save_final(model, tokenizer)


def accumulate_sft_step(run: Run, model: Any, micro_batches: list[list[Any]], pad_id: int) -> tuple[float, int]:
    """Forward/backward every micro-batch of one optimiser step; returns (mean loss, response tokens).

    Each micro-batch's token-mean loss is weighted 1/len(micro_batches); gradients sync on the last one only.
    """
    total_loss, total_tokens = 0.0, 0
    for k, examples in enumerate(micro_batches):
        batch = {key: value.to(run.device) for key, value in collate(examples, pad_id).items()}
        sync = k == len(micro_batches) - 1
        with nullcontext() if sync else run.accelerator.no_sync(model):
            tokens = model_token_logps(model, **batch)
            loss = sft_nll(tokens) / len(micro_batches)
            run.accelerator.backward(loss)
        total_loss += float(loss.detach())
        total_tokens += int(tokens.mask.sum())
    return total_loss, total_tokens
