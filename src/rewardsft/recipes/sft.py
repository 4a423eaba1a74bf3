"""Supervised fine-tuning: maximum likelihood on the demonstrations, prompt tokens masked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rewardsft.config import RunConfig
from rewardsft.data import TokenizedExample
from rewardsft.data.collate import batch_on, collate_packed
from rewardsft.logprobs import (
    BLOCK_MASK_KEYS,
    TokenLogps,
    block_mask_logits,
    check_block_mask,
    model_token_logps,
    token_logps,
)
from rewardsft.losses import sft_nll
from rewardsft.recipes.common import eval_batch, start_recipe
from rewardsft.training.batches import plan_steps, total_steps
from rewardsft.training.optim import build_optimizer, build_scheduler
from rewardsft.training.run import StepTimer
from rewardsft.training.step import log_due, micro_batch_context, optimizer_step, reduce_metrics


def train_sft(config: RunConfig) -> Path:
    """Train with SFT; returns the ``final/`` directory."""
    start = start_recipe(config)
    run, tokenizer, model = start.run, start.tokenizer, start.model
    train_data, eval_data = start.train_data, start.eval_data
    model = run.prepare(model)
    if config.train.packing:
        check_block_mask(model, "train.packing", "set train.packing=false")
    optimizer = build_optimizer(model.parameters(), config.optim)
    tc = config.train
    n_steps = total_steps(
        len(train_data.tokenized), tc.batch_size, tc.grad_accum, run.world_size, tc.epochs, tc.max_steps
    )
    scheduler = build_scheduler(optimizer, config.optim, n_steps)
    optimizer = run.prepare_optimizer(optimizer)
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
        metrics = accumulate_sft_step(run.accelerator, model, micro, tokenizer.pad_token_id, width)
        stats = optimizer_step(
            run.accelerator, model.parameters(), optimizer, scheduler, tc.max_grad_norm, tc.on_nonfinite
        )
        step = batches.step + 1
        metrics |= {
            **stats.metrics(),
            "train/epoch": batches.epoch,
            "time/step_s": timer.lap(),
        }
        if eval_data is not None and tc.eval_every and step % tc.eval_every == 0:
            metrics["eval/loss"] = run.eval_nll(model, eval_data.tokenized, eval_batch(config), tokenizer.pad_token_id)
        if log_due(step, tc.log_every, step == n_steps, metrics):
            run.log(step, metrics)
        if run.checkpoint_due(step % tc.save_every == 0 or step == n_steps):
            run.save_checkpoint(model, optimizers, {"step": step})

    if eval_data is not None:
        final_eval = run.eval_nll(model, eval_data.tokenized, eval_batch(config), tokenizer.pad_token_id)
        run.log(n_steps, {"eval/loss": final_eval})
    return run.save_final(model, tokenizer)


def accumulate_sft_step(
    accelerator: Any,
    model: Any,
    micro_batches: list[list[TokenizedExample]],
    pad_id: int,
    packing_width: int | None = None,
) -> dict[str, float]:
    """Forward/backward every micro-batch of one optimiser step; returns ``train/loss`` and ``train/tokens``.

    The loss is the mean NLL over every response token of the step on every process, so the gradient does
    not depend on how the step is split into micro-batches or processes: each token's NLL is divided by the
    step's global token count (and multiplied by the process count, which DDP's gradient mean divides out).
    """
    local_tokens = sum(sum(len(ex.response_ids) for ex in examples) for examples in micro_batches)
    step_tokens = reduce_metrics(accelerator, {"tokens": local_tokens}, reduction="sum")["tokens"]
    loss = 0.0
    for k, examples in enumerate(micro_batches):
        with micro_batch_context(accelerator, model, last=k == len(micro_batches) - 1):
            tokens = micro_batch_logps(model, examples, pad_id, accelerator.device, packing_width)
            part = sft_nll(tokens, n_tokens=step_tokens)
            accelerator.backward(part * accelerator.num_processes)
        loss += float(part.detach())
    total = reduce_metrics(accelerator, {"loss": loss}, reduction="sum")["loss"]
    return {"train/loss": total, "train/tokens": step_tokens}


def micro_batch_logps(
    model: Any, examples: list[TokenizedExample], pad_id: int, device: torch.device, packing_width: int | None = None
) -> TokenLogps:
    """The examples' per-token log-probs: one right-padded row each (:func:`collate`), or packed into rows of up to
    ``packing_width`` tokens (:func:`collate_packed`, ``train.packing``); the same tokens either way."""
    if packing_width is None:
        return model_token_logps(model, **batch_on(examples, pad_id, device))
    batch = {key: value.to(device) for key, value in collate_packed(examples, pad_id, packing_width).items()}
    logits = block_mask_logits(model, *(batch[k] for k in BLOCK_MASK_KEYS))
    return token_logps(logits, batch["labels"])
