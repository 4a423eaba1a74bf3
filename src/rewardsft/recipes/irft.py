"""IRFT (the paper's Algorithm 2): staged self-generation against a per-stage snapshot. SPIN is T=1.

For each epoch, the shuffled demonstrations are split into T = ``irft.stages`` chunks. Stage t snapshots the
policy (θ_t), samples one response per prompt of chunk t with it, then trains the contrastive loss
ℓ(β·[(log π_θ(y) − log π_θ(ỹ)) − (log π_ref(y) − log π_ref(ỹ))]) on the chunk's (prompt, demo, generation).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import RunConfig
from rewardsft.data import Renderer, TokenizedExample
from rewardsft.data.collate import batch_on
from rewardsft.errors import ConfigError
from rewardsft.generation import (
    Generation,
    as_example,
    end_of_turn_ids,
    generate,
    generation_stats,
)
from rewardsft.layout import GENERATIONS_FILE, stage_dir
from rewardsft.logprobs import TokenLogps, block_mask_problem, check_block_mask, model_token_logps, sequence_logps
from rewardsft.losses import IRFTLoss, IRFTTerms, irft_loss, sft_nll
from rewardsft.recipes.common import eval_batch, start_recipe
from rewardsft.reference import (
    CachedSnapshot,
    CopySnapshot,
    LoraBaseSnapshot,
    Pair,
    Snapshot,
    compute_ref_logps,
    merge_lora_into_base,
    pair_batch,
    shared_pair_batch,
    shared_split_logps,
)
from rewardsft.training.batches import epoch_permutation, plan_steps, steps_per_epoch
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

OVERFIT_NATS_PER_TOKEN = 1.2


@dataclass(frozen=True)
class Stage:
    index: int
    """0-based over the whole run (epoch * T + t)."""
    example_ids: list[int]
    first_step: int
    steps: int

    @property
    def name(self) -> str:
        return f"stage-{self.index + 1}"


def train_irft(config: RunConfig) -> Path:
    """Train with IRFT; returns the ``final/`` directory."""
    ic, tc = config.irft, config.train
    start = start_recipe(config)
    run, tokenizer, model, renderer = start.run, start.tokenizer, start.model, start.renderer
    train_data, eval_data = start.train_data, start.eval_data
    stages = plan_stages(len(train_data.tokenized), config, run.world_size)
    n_steps = stages[-1].first_step + stages[-1].steps
    state = run.resume_state()
    model = run.prepare(model)
    if ic.pair_forward == "shared":
        check_block_mask(model, "irft.pair_forward=shared", "use irft.pair_forward=joint or split")
    spec = PairLossSpec.from_config(config, model)
    run.print(f"irft: pair forward {spec.pair_forward}")
    optimizers: Optimizers = {}
    pad_id = tokenizer.pad_token_id
    stop_ids = end_of_turn_ids(renderer, run.accelerator.unwrap_model(model))
    for stage in stages:
        if stage.first_step + stage.steps <= state["step"]:
            continue  # finished before the checkpoint
        resuming_in_stage = state["step"] > stage.first_step
        if not optimizers or ic.reset_optimizer_each_stage:
            horizon = stage.steps if ic.reset_optimizer_each_stage else n_steps
            optimizer = build_optimizer(model.parameters(), config.optim)
            scheduler = build_scheduler(optimizer, config.optim, horizon)
            optimizers = {"policy": (run.prepare_optimizer(optimizer), scheduler)}
            if state["step"] > 0 and (resuming_in_stage or not ic.reset_optimizer_each_stage):
                run.restore_optimizers(optimizers, model)
        optimizer, scheduler = optimizers["policy"]

        examples = [train_data.tokenized[i] for i in stage.example_ids]
        pairs = stage_pairs(run, model, stage, examples, tokenizer, config, renderer, stop_ids)
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
            metrics = accumulate_irft_step(run.accelerator, model, snapshot, pairs, batches.micro_batches, pad_id, spec)
            stats = optimizer_step(
                run.accelerator, model.parameters(), optimizer, scheduler, tc.max_grad_norm, tc.on_nonfinite
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
                metrics["eval/loss"] = run.eval_nll(model, eval_data.tokenized, eval_batch(config), pad_id)
            if log_due(step, tc.log_every, batches.step + 1 == stage.steps, metrics):
                run.log(step, metrics)
            if run.checkpoint_due(step % tc.save_every == 0 or batches.step + 1 == stage.steps):
                checkpoint_state = {"step": step, "stage": stage.index + 1}
                run.save_checkpoint(model, optimizers, checkpoint_state, with_base=ic.snapshot == "lora")
        state = {"step": stage.first_step + stage.steps}
        del snapshot

    if eval_data is not None:
        run.log(n_steps, {"eval/loss": run.eval_nll(model, eval_data.tokenized, eval_batch(config), pad_id)})
    # snapshot=lora merges every stage's adapter into the base: the last adapter alone would not reproduce the
    # model on the base it names, so only final/ (merged) is exported.
    return run.save_final(model, tokenizer, export_adapter=ic.snapshot != "lora")


def plan_stages(n_examples: int, config: RunConfig, world_size: int) -> list[Stage]:
    """T equal chunks of each epoch's seeded permutation; a stage covers its chunk ``epochs_per_stage`` times.

    ``train.max_steps``, when set, caps the total by shortening (and dropping) the last stages.
    """
    ic, tc = config.irft, config.train
    if n_examples < ic.stages:
        raise ConfigError(f"irft.stages={ic.stages} is more than the {n_examples} training examples")
    stages: list[Stage] = []
    first = 0
    for epoch in range(tc.epochs):
        order = epoch_permutation(n_examples, config.seed, epoch)
        for t in range(ic.stages):
            chunk = order[t * n_examples // ic.stages : (t + 1) * n_examples // ic.stages]
            steps = ic.epochs_per_stage * steps_per_epoch(len(chunk), tc.batch_size, tc.grad_accum, world_size)
            if tc.max_steps is not None:
                steps = min(steps, tc.max_steps - first)
            if steps <= 0:
                return stages
            stages.append(Stage(epoch * ic.stages + t, chunk, first, steps))
            first += steps
    return stages


def stage_pairs(
    run: Run,
    model: Any,
    stage: Stage,
    examples: list[TokenizedExample],
    tokenizer: Any,
    config: RunConfig,
    renderer: Renderer,
    stop_ids: list[int],
) -> list[Pair]:
    """(demonstration, generation) pairs of the stage: read back from disk, or sampled by the snapshot."""
    path = stage_dir(run.output_dir, stage.name) / GENERATIONS_FILE
    if path.is_file():
        generations = read_generations(path, examples, sampling_settings(config))
        run.print(f"{stage.name}: reusing {len(generations)} generations from {path}")
    else:
        generations = sample_stage(run, model, stage, examples, tokenizer.pad_token_id, config, stop_ids)
        stats = generation_stats(generations, [ex.response_ids for ex in examples])
        if run.is_main:
            write_generations(path, stage, examples, generations, tokenizer, renderer, stats, sampling_settings(config))
        run.accelerator.wait_for_everyone()
        # No truncation warning here (RFT keeps one): in the real-data study IRFT stages whose samples were 66-94%
        # cut by the cap were healthy, since pushing down rambling samples is what teaches the policy to stop
        # (docs/results.md); the warning fired on a healthy IRFT run and never on the collapsed one.
        run.log(stage.first_step, stats)
    return [
        Pair(ex, as_example(ex, gen, config.data.max_length)) for ex, gen in zip(examples, generations, strict=True)
    ]


def sample_stage(
    run: Run,
    model: Any,
    stage: Stage,
    examples: list[TokenizedExample],
    pad_id: int,
    config: RunConfig,
    stop_ids: list[int],
) -> list[Generation]:
    """Each process samples its share of the prompts; the shares are gathered back into chunk order."""
    mine = list(range(run.rank, len(examples), run.world_size))
    local = generate(
        run.accelerator.unwrap_model(model),
        [examples[i].prompt_ids for i in mine],
        config.generation,
        pad_id=pad_id,
        eos_ids=stop_ids,
        seed=derive_seed(config.seed, "irft/generate", stage.index, run.rank),
    )
    gathered = run.gather(list(zip(mine, local, strict=True)))
    by_position = dict(gathered)
    return [by_position[i] for i in range(len(examples))]


def write_generations(
    path: Path,
    stage: Stage,
    examples: list[TokenizedExample],
    generations: list[Generation],
    tokenizer: Any,
    renderer: Renderer,
    stats: dict[str, float],
    settings: dict[str, Any],
) -> None:
    """``generations.jsonl`` (one row per prompt, token ids included for exact reuse) and ``stats.json`` (with the
    sampling ``settings`` they were drawn with, checked when they are reused)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as handle:
        for ex, gen in zip(examples, generations, strict=True):
            row = {
                "index": ex.index,
                "prompt": tokenizer.decode(ex.prompt_ids, skip_special_tokens=False),
                "demonstration": tokenizer.decode(ex.response_ids, skip_special_tokens=True),
                "generation": tokenizer.decode(gen.response_ids, skip_special_tokens=True),
                "stopped": gen.stopped,
                "response_ids": gen.response_ids,
            }
            handle.write(json.dumps(row) + "\n")
    record = {"stage": stage.index + 1, **stats, "generation": settings}
    (path.parent / "stats.json").write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def sampling_settings(config: RunConfig) -> dict[str, Any]:
    """What the stage's samples depend on: the ``generation`` section but its batching (prompts per call)."""
    settings = dataclasses.asdict(config.generation)
    settings.pop("batch_size")
    return settings


def read_generations(path: Path, examples: list[TokenizedExample], settings: dict[str, Any]) -> list[Generation]:
    """The stage's generations written before a resume, refused when they belong to other data (rows matched by
    their data-file row, ``TokenizedExample.index``) or were sampled with other ``generation`` settings."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if [row["index"] for row in rows] != [ex.index for ex in examples]:
        raise ConfigError(f"{path} was written for other data or settings; use overwrite=true to start again")
    stats_path = path.parent / "stats.json"
    # Files written before the settings were recorded carry none: nothing to compare.
    written = json.loads(stats_path.read_text()).get("generation", {}) if stats_path.is_file() else {}
    changed = [f"generation.{k}={settings[k]!r} (was {v!r})" for k, v in written.items() if settings.get(k, v) != v]
    if changed:
        raise ConfigError(
            f"{path} was sampled with other settings than this resume's: {', '.join(changed)}; resume with the "
            "settings the run started with, or start again with overwrite=true"
        )
    return [Generation(row["response_ids"], row["stopped"]) for row in rows]


def take_snapshot(
    run: Run,
    model: Any,
    stage: Stage,
    pairs: list[Pair],
    config: RunConfig,
    pad_id: int,
    reuse_cache: bool,
    forward: str = "split",
) -> Snapshot:
    """θ_t for the stage, reading its pairs as the step's pair ``forward`` does. The cached log-probs are also
    saved, so a run resumed mid-stage uses them."""
    # One file, written by rank 0: every process holds the same gathered cache, so a run can resume mid-stage on
    # any number of processes (the name dates from when each process wrote its own).
    cache_path = stage_dir(run.output_dir, stage.name) / "ref_logps.rank0.pt"
    if reuse_cache:
        # Mid-stage the policy is no longer θ_t: only the cache written at the stage start can stand in for it.
        if not cache_path.is_file():
            raise ConfigError(f"cannot resume inside {stage.name}: its snapshot cache {cache_path} is missing")
        return CachedSnapshot(torch.load(cache_path, weights_only=True))
    policy = run.accelerator.unwrap_model(model)
    if config.irft.snapshot == "lora":
        merge_lora_into_base(policy)
    shared = forward == "shared"
    cache = gathered_ref_logps(run, policy, pairs, eval_batch(config), pad_id, shared)
    if run.is_main:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cache, cache_path)
    if config.irft.snapshot == "copy":
        return CopySnapshot(policy, shared)
    if config.irft.snapshot == "lora":
        return LoraBaseSnapshot(policy, shared)
    return CachedSnapshot(cache)


def gathered_ref_logps(
    run: Run, policy: Any, pairs: list[Pair], batch_size: int, pad_id: int, shared: bool
) -> torch.Tensor:
    """The snapshot log-probs of all the stage's pairs on every process, each process computing its share (every
    world_size-th pair) and the shares gathered: the snapshot pass then scales with the number of processes."""
    mine = list(range(run.rank, len(pairs), run.world_size))
    # The dummy batch comes from the stage: a process's own share is empty when the stage has fewer pairs than
    # processes, and it must still run the collective forwards the others run.
    local = compute_ref_logps(policy, [pairs[i] for i in mine], batch_size, pad_id, dummy=pairs[:1], shared=shared)
    if run.world_size == 1:
        return local
    rows = dict(run.gather(list(zip(mine, local.tolist(), strict=True))))
    return torch.tensor([rows[i] for i in range(len(pairs))], dtype=torch.float32).reshape(-1, 2)


@dataclass(frozen=True)
class PairLossSpec:
    """What one IRFT micro-step needs to know about the objective."""

    beta: float
    loss: IRFTLoss
    sft_weight: float
    pair_forward: str
    """``split``, ``joint`` or ``shared`` (``auto`` already resolved)."""

    @classmethod
    def from_config(cls, config: RunConfig, model: Any = None) -> PairLossSpec:
        ic = config.irft
        return cls(ic.beta, IRFTLoss(ic.loss), ic.sft_weight, pair_forward(config, model))


IRFT_METRICS = (
    "irft/loss",
    "irft/demo_reward",
    "irft/gen_reward",
    "irft/margin",
    "irft/accuracy",
    "logps/demo",
    "logps/gen",
)


@dataclass(frozen=True)
class StepSize:
    """What one optimiser step covers over every micro-batch and process: the loss is ℓ's mean over ``pairs`` plus
    ``sft_weight`` × the NLL's mean over the demonstrations' ``tokens``, so splitting a step into micro-batches or
    processes does not change its gradient. ``processes`` undoes DDP's mean over processes."""

    pairs: float
    tokens: float
    processes: int


def accumulate_irft_step(
    accelerator: Any,
    model: Any,
    snapshot: Snapshot,
    pairs: list[Pair],
    micro_batches: list[list[int]],
    pad_id: int,
    spec: PairLossSpec,
) -> dict[str, float]:
    """Forward/backward the micro-batches of one optimiser step; returns the step's metrics (over all processes)."""
    local = {
        "pairs": sum(len(ids) for ids in micro_batches),
        "tokens": sum(len(pairs[i].demo.response_ids) for ids in micro_batches for i in ids),
    }
    counts = reduce_metrics(accelerator, local, reduction="sum")
    size = StepSize(counts["pairs"], counts["tokens"], accelerator.num_processes)
    totals = torch.zeros(len(IRFT_METRICS), dtype=torch.float64)
    backward = PAIR_BACKWARDS[spec.pair_forward]
    for k, ids in enumerate(micro_batches):
        chunk = [pairs[i] for i in ids]
        ref_demo, ref_gen = snapshot.logps(ids, chunk, pad_id, accelerator.device)
        last = k == len(micro_batches) - 1
        terms, loss, demo_logps, gen_logps = backward(
            accelerator, model, chunk, ref_demo, ref_gen, spec, pad_id, size, last
        )
        # The loss part is already this micro-batch's share of the step's loss; the rest are per-pair sums.
        parts = [loss * size.pairs, terms.demo_reward.sum(), terms.gen_reward.sum(), terms.margin.sum()]
        parts += [(terms.margin > 0).float().sum(), demo_logps.sum(), gen_logps.sum()]
        totals += torch.stack([p.double().cpu() for p in parts])
    summed = reduce_metrics(accelerator, dict(zip(IRFT_METRICS, totals.tolist(), strict=True)), reduction="sum")
    metrics = {name: value / max(size.pairs, 1.0) for name, value in summed.items()}
    local_gen = sum(len(pairs[i].gen.response_ids) for ids in micro_batches for i in ids)
    gen_tokens = reduce_metrics(accelerator, {"t": local_gen}, reduction="sum")["t"]
    metrics["train/tokens"] = size.tokens + gen_tokens
    # log π_θ(ỹ) − log π_ref(ỹ) over every generated token of the step: the overfit rule's length-free measure.
    metrics["irft/gen_logratio_per_token"] = summed["irft/gen_reward"] / spec.beta / max(gen_tokens, 1.0)
    return metrics


PairBackward = tuple[IRFTTerms, torch.Tensor, torch.Tensor, torch.Tensor]


def pair_forward(config: RunConfig, model: Any = None) -> str:
    """Resolve ``irft.pair_forward=auto`` by measurement (docs/performance.md): joint under gradient
    checkpointing; without it, shared on CPU where ``model`` takes the block mask (1.42x SFT's step time against
    split's 2.22x, the same peak memory, at 64+64 tokens), else split. Not yet measured on a GPU: split there."""
    if config.irft.pair_forward != "auto":
        return config.irft.pair_forward
    if config.model.gradient_checkpointing:
        return "joint"
    on_cpu = model is not None and next(model.parameters()).device.type == "cpu"
    return "shared" if on_cpu and block_mask_problem(model) is None else "split"


def pair_loss(
    demo_logps: torch.Tensor,
    gen_logps: torch.Tensor,
    ref_demo: torch.Tensor,
    ref_gen: torch.Tensor,
    demo_tokens: TokenLogps,
    spec: PairLossSpec,
    size: StepSize,
) -> tuple[IRFTTerms, torch.Tensor]:
    """One micro-batch's share of the step objective: ℓ(margin) summed over its pairs / the step's pairs, plus
    ``sft_weight`` × its demonstrations' NLL / the step's demonstration tokens."""
    terms = irft_loss(demo_logps, gen_logps, ref_demo, ref_gen, spec.beta, spec.loss)
    loss = terms.loss.sum() / max(size.pairs, 1.0)
    if spec.sft_weight:
        loss = loss + spec.sft_weight * sft_nll(demo_tokens, n_tokens=size.tokens)
    return terms, loss


def joint_tokens(model: Any, chunk: list[Pair], pad_id: int, device: torch.device) -> tuple[TokenLogps, TokenLogps]:
    """Demonstrations and generations in one forward of 2B rows: fastest, twice SFT's activation memory."""
    tokens = model_token_logps(model, **pair_batch(chunk, pad_id, device))
    half = len(chunk)
    return TokenLogps(tokens.logps[:half], tokens.mask[:half]), TokenLogps(tokens.logps[half:], tokens.mask[half:])


def shared_tokens(model: Any, chunk: list[Pair], pad_id: int, device: torch.device) -> tuple[TokenLogps, TokenLogps]:
    """One row per pair, ``[prompt | demonstration | generation]``, with a mask that hides the demonstration from
    the generation: the prompt's forward (and its activations) is shared by both."""
    return shared_split_logps(model, shared_pair_batch(chunk, pad_id, device))


def one_pass_backward(
    read: Any,
    accelerator: Any,
    model: Any,
    chunk: list[Pair],
    ref_demo: torch.Tensor,
    ref_gen: torch.Tensor,
    spec: PairLossSpec,
    pad_id: int,
    size: StepSize,
    last: bool,
) -> PairBackward:
    """Both halves' log-probs from one forward (``read``: :func:`joint_tokens` or :func:`shared_tokens`), one
    backward of the micro-batch's share of the step loss."""
    with micro_batch_context(accelerator, model, last):
        demo_tokens, gen_tokens = read(model, chunk, pad_id, accelerator.device)
        demo_logps, gen_logps = sequence_logps(demo_tokens, "sum"), sequence_logps(gen_tokens, "sum")
        terms, loss = pair_loss(demo_logps, gen_logps, ref_demo, ref_gen, demo_tokens, spec, size)
        accelerator.backward(loss * size.processes)
    return terms, loss.detach(), demo_logps.detach(), gen_logps.detach()


joint_pair_backward = functools.partial(one_pass_backward, joint_tokens)
shared_pair_backward = functools.partial(one_pass_backward, shared_tokens)


def split_pair_backward(
    accelerator: Any,
    model: Any,
    chunk: list[Pair],
    ref_demo: torch.Tensor,
    ref_gen: torch.Tensor,
    spec: PairLossSpec,
    pad_id: int,
    size: StepSize,
    last: bool,
) -> PairBackward:
    """The same gradient with one half's activations alive at a time (SFT memory), for one extra no-grad
    forward of the generations.

    The loss couples the halves only through the scalar log-probs, so: forward the generations without grad
    and the demonstrations with, backward the loss through the demonstrations and into a leaf holding the
    generations' log-probs (giving ∂loss/∂log π(ỹ) per row), then forward the generations again with grad
    and backward that coefficient times their log-probs. This needs the two generation forwards to agree,
    which is why dropout is off in IRFT (``train.dropout``).
    """
    demo_batch = batch_on([p.demo for p in chunk], pad_id, accelerator.device)
    gen_batch = batch_on([p.gen for p in chunk], pad_id, accelerator.device)
    # The no-grad pass goes first so its logits are freed before the demonstrations' graph is built.
    with torch.no_grad():
        gen_leaf = sequence_logps(model_token_logps(model, **gen_batch), "sum").requires_grad_(True)
    with micro_batch_context(accelerator, model, last=False):
        demo_tokens = model_token_logps(model, **demo_batch)
        demo_logps = sequence_logps(demo_tokens, "sum")
        terms, loss = pair_loss(demo_logps, gen_leaf, ref_demo, ref_gen, demo_tokens, spec, size)
        # The coefficient is taken from the loss itself, not from gen_leaf.grad after accelerator.backward: under
        # an fp16 GradScaler that grad already carries the loss scale, and the second backward would scale it again.
        (coef,) = torch.autograd.grad(loss * size.processes, gen_leaf, retain_graph=True)
        accelerator.backward(loss * size.processes)
    with micro_batch_context(accelerator, model, last):
        gen_logps = sequence_logps(model_token_logps(model, **gen_batch), "sum")
        accelerator.backward((coef.detach() * gen_logps).sum())
    return terms, loss.detach(), demo_logps.detach(), gen_logps.detach()


PAIR_BACKWARDS: dict[str, Callable[..., PairBackward]] = {
    "split": split_pair_backward,
    "joint": joint_pair_backward,
    "shared": shared_pair_backward,
}


def overfit_warning(stage: Stage, step: int, logratio_per_token: float) -> str:
    return (
        f"warning: {stage.name} step {step} (the last stage): the policy pushed its own samples' log-probability "
        f"{-logratio_per_token:.2f} nats per token below the snapshot's (> {OVERFIT_NATS_PER_TOKEN}); the snapshot "
        "is being overfit and no later stage regenerates to correct it, so samples may collapse. Use more stages "
        "(irft.stages), a lower optim.lr or irft.sft_weight > 0 (docs/results.md)."
    )


def overfitting(metrics: dict[str, float], last_stage: bool) -> bool:
    """In the LAST stage, the policy has pushed the log-probability of its own snapshot samples down by more than
    ``OVERFIT_NATS_PER_TOKEN`` nats per generated token (``irft/gen_logratio_per_token``): self-play is pushing
    down samples that were already fine, and no later stage will sample from the result and correct it.

    Per token, so one threshold holds at any ``generation.max_new_tokens`` (a sum over tokens grows with the
    samples' length: a healthy run with long samples would pass a summed threshold, a collapse on short ones
    never reach it). Validated on the real-data study (docs/results.md, tests/unit/test_guard_rails.py), whose
    samples were at most 48 tokens: the four collapsed runs (SPIN at lr 1e-5 from the base, two domains, two
    seeds) reached −2.0 to −2.5 nats per token in their stage; every healthy or stalled run stayed above −0.85
    in its last stage (β 0.1 and 1, lr 5e-7 to 1e-5, T 1 to 4, sft_weight 0 and 1). An earlier summed rule (−40
    nats) separated those runs too, at their lengths only. Rules tried before and dropped: accuracy 1 with loss
    < 0.05 early in any stage (fired on healthy IRFT T=2, whose first stage over-shot and whose second stage
    corrected it, and on SPIN at β = 1, where the loss saturates without a collapse); the implicit margin above 40
    nats (fired on SPIN with sft_weight 1, whose anchor raises the demonstrations' side).
    """
    return last_stage and metrics["irft/gen_logratio_per_token"] < -OVERFIT_NATS_PER_TOKEN
