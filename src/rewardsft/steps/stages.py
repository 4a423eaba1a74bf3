"""IRFT's stages: the plan over each epoch's shuffled chunks, the snapshot's samples (written once, reused on
resume), the snapshot θ_t itself, and the last-stage overfit rule."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardsft.config import IRFTConfig
from rewardsft.data import Renderer, TokenizedExample
from rewardsft.errors import ConfigError
from rewardsft.generation import Generation, Sampler, as_example, generation_stats
from rewardsft.layout import GENERATIONS_FILE, stage_dir
from rewardsft.reference import (
    CachedSnapshot,
    CopySnapshot,
    LoraBaseSnapshot,
    Pair,
    Snapshot,
    compute_ref_logps,
    merge_lora_into_base,
)
from rewardsft.training.batches import epoch_permutation, steps_per_epoch
from rewardsft.training.checkpoint import Optimizers
from rewardsft.training.engine import Engine, EngineRules
from rewardsft.training.optim import build_optimizer, build_scheduler
from rewardsft.training.run import Run
from rewardsft.training.step import derive_seed

OVERFIT_NATS_PER_TOKEN = 1.2


def check_irft_engine(engine: Engine, config: IRFTConfig) -> None:
    """IRFT's rules beyond the engine's own: a sharded policy keeps its snapshot as cached log-probs (a frozen copy
    or a merged LoRA base would have to be sharded too)."""
    if engine.sharded and config.irft.snapshot != "cached":
        raise ConfigError(
            f"irft.snapshot={config.irft.snapshot} is not supported with {engine.name} (the copy or the merged LoRA "
            "base would have to be sharded too); use irft.snapshot=cached (the default)"
        )


IRFT_RULES = EngineRules(check=check_irft_engine)


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


def plan_stages(n_examples: int, config: IRFTConfig, world_size: int) -> list[Stage]:
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


def stage_optimizers(
    run: Run,
    model: Any,
    prepared: Any,
    config: IRFTConfig,
    stage: Stage,
    n_steps: int,
    optimizers: Optimizers,
    step: int,
) -> Optimizers:
    """The policy's optimiser for ``stage``: one for the whole run (``prepared``, the optimiser the engine prepared
    with the model; its schedule over all ``n_steps``), or a fresh one per stage with
    ``irft.reset_optimizer_each_stage`` (its schedule over the stage). ``step`` is where the run stands; a resumed
    run restores the checkpoint's optimiser state into the one it continues, but not into a stage's fresh one when
    the checkpoint ended the previous stage."""
    reset = config.irft.reset_optimizer_each_stage
    if optimizers and not reset:
        return optimizers
    optimizer = prepared
    if optimizers:  # a stage after the first, with a reset
        optimizer = run.engine.fresh_optimizer(
            model, optimizers["policy"][0], lambda p: build_optimizer(p, config.optim)
        )
    scheduler = build_scheduler(run.engine.base_optimizer(optimizer), config.optim, stage.steps if reset else n_steps)
    fresh: Optimizers = {"policy": (optimizer, scheduler)}
    if step > 0 and (step > stage.first_step or not reset):
        run.restore_optimizers(fresh, model)
    return fresh


def stage_pairs(
    run: Run,
    model: Any,
    stage: Stage,
    examples: list[TokenizedExample],
    tokenizer: Any,
    config: IRFTConfig,
    renderer: Renderer,
    sampler: Sampler,
) -> list[Pair]:
    """(demonstration, generation) pairs of the stage: read back from disk, or drawn from the snapshot by
    ``sampler``."""
    path = stage_dir(run.output_dir, stage.name) / GENERATIONS_FILE
    if path.is_file():
        generations = read_generations(path, examples, sampling_settings(config))
        run.print(f"{stage.name}: reusing {len(generations)} generations from {path}")
    else:
        generations = sample_stage(run, model, stage, examples, config, sampler)
        stats = generation_stats(generations, [ex.response_ids for ex in examples])
        if run.is_main:
            write_generations(path, stage, examples, generations, tokenizer, renderer, stats, sampling_settings(config))
        run.engine.barrier()
        # No truncation warning here (RFT keeps one): in the real-data study IRFT stages whose samples were 66-94%
        # cut by the cap were healthy, since pushing down rambling samples is what teaches the policy to stop
        # (docs/results.md); the warning fired on a healthy IRFT run and never on the collapsed one.
        run.log(stage.first_step, stats)
    return [
        Pair(ex, as_example(ex, gen, config.data.max_length)) for ex, gen in zip(examples, generations, strict=True)
    ]


def sample_stage(
    run: Run, model: Any, stage: Stage, examples: list[TokenizedExample], config: IRFTConfig, sampler: Sampler
) -> list[Generation]:
    """Each process samples its share of the prompts; the shares are gathered back into chunk order."""
    mine = list(range(run.rank, len(examples), run.world_size))
    with run.engine.decoding(model) as decoder:
        seed = derive_seed(config.seed, "irft/generate", stage.index, run.rank)
        local = sampler.sample(decoder, [examples[i].prompt_ids for i in mine], seed)
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


def sampling_settings(config: IRFTConfig) -> dict[str, Any]:
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
    config: IRFTConfig,
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
    policy = run.engine.unwrap(model)
    if config.irft.snapshot == "lora":
        merge_lora_into_base(policy)
    shared = forward == "shared"
    cache = gathered_ref_logps(run, policy, pairs, config.train.eval_batch, pad_id, shared)
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

    Validated on the real-data study (the threshold's evidence and the rules tried before it: docs/LOG.md,
    2026-11-28 second session and 2026-12-01 fifth session; tests/unit/test_guard_rails.py).
    """
    # Per token, so one threshold holds at any generation.max_new_tokens: a sum grows with the samples' length.
    return last_stage and metrics["irft/gen_logratio_per_token"] < -OVERFIT_NATS_PER_TOKEN
