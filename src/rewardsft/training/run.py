"""A training run's plumbing shared by every recipe: output dir, engine, metrics, checkpoints.

Recipes stay readable by calling these few methods and the run's :class:`~rewardsft.training.engine.Engine`;
``training/`` is the only code that touches the ``Accelerator``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from rewardsft.config import RewardLearningConfig, RunConfig, flatten
from rewardsft.data import TokenizedExample
from rewardsft.data.collate import batch_on
from rewardsft.errors import ConfigError
from rewardsft.layout import ADAPTER, CONFIG_FILE, FINAL, RUN_FILE, SFT_PHASE_DIR
from rewardsft.logprobs import model_token_logps
from rewardsft.model_card import write_model_card
from rewardsft.models import eval_mode, is_peft, original_dropout_config, save_policy, whole_peft_copy
from rewardsft.sharding import lockstep
from rewardsft.training import checkpoint as ckpt
from rewardsft.training.engine import Engine, EngineRules, OptimizerFactory, make_engine
from rewardsft.training.metrics import MetricsLogger
from rewardsft.training.signals import STOP, Preempted

T = TypeVar("T")
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


def check_output_dir(config: RunConfig, phase: bool = False) -> Path:
    """Refuse a non-empty output dir unless resuming or overwriting (nothing is written here). ``phase``: the
    reward phase of a run with an SFT phase, whose ``sft/`` folder is that run's own and does not count."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} exists and is not a directory")
    if own_content(out, phase) and not (config.overwrite or config.resume):
        raise ConfigError(
            f"output_dir {out} is not empty; pass resume=true to continue it or overwrite=true to replace it"
        )
    existing = nearest_existing(out)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {out}: {existing} is not a writable directory")
    return out


def own_content(out: Path, phase: bool) -> list[Path]:
    """What is in ``out`` that a new run would replace (a reward phase keeps its SFT phase's folder)."""
    if not out.is_dir():
        return []
    return [p for p in out.iterdir() if not (phase and p.name == SFT_PHASE_DIR)]


def end_process_group() -> None:
    """At the end of a recipe run (:func:`rewardsft.recipes.run_recipe`): leave the process group cleanly."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def checkpoint_bytes(models: Sequence[Any], optimizer_name: str, engine: Engine | None = None) -> int:
    """Bytes one checkpoint takes: the trainable weights plus the optimiser's state (AdamW two moments, RMSprop
    one) as ``engine`` keeps it (by default in the parameters' dtype: torch keeps moments in it, bf16 on GPU);
    frozen LoRA bases are saved once more with ``irft.snapshot=lora`` but are left out of this lower bound."""
    moments = 2 if optimizer_name == "adamw" else 1
    total = 0
    for model in models:
        for param in model.parameters():
            if param.requires_grad:
                state = engine.optimizer_state_bytes(param, moments) if engine else param.element_size() * moments
                total += param.numel() * (param.element_size() + state)
    return total


def check_room(output_dir: Path, models: Sequence[Any], optimizer_name: str, engine: Engine | None = None) -> None:
    """Refuse to start when the disk cannot hold one checkpoint and the final model (with 10% to spare)."""
    need = int(1.1 * (checkpoint_bytes(models, optimizer_name, engine) + sum(_weight_bytes(m) for m in models)))
    free = shutil.disk_usage(nearest_existing(output_dir)).free
    if free < need:
        raise ConfigError(
            f"output_dir {output_dir}: {free / 1e9:.2f} GB free but one checkpoint and the final model need about "
            f"{need / 1e9:.2f} GB (train.keep_checkpoints=n keeps n of them); free space or choose another "
            "output_dir"
        )


def _weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class Run:
    """Engine, metrics and checkpoint handling for one ``output_dir``."""

    def __init__(self, config: RunConfig, rules: EngineRules | None = None):
        """Check the config and output dir and set up the engine; writes nothing yet (see ``begin``)."""
        if not config.model.name_or_path:
            raise ConfigError("model.name_or_path is not set")
        if not config.data.path:
            raise ConfigError("data.path is not set")
        self.config = config
        self.rules = rules or EngineRules()
        self.trackers = _check_trackers(config.logging.report_to)
        self.phase = isinstance(config, RewardLearningConfig) and config.sft_phase.epochs > 0
        self.output_dir = check_output_dir(config, self.phase)
        self.engine: Engine = make_engine(config, self.trackers)
        if self.rules.check is not None:
            self.rules.check(self.engine, config)
        self.accelerator = self.engine.accelerator  # trackers only; everything else goes through the engine
        self.is_main = self.engine.is_main
        self.checkpoint: Path | None = None
        self.metrics = MetricsLogger(self.output_dir, enabled=False, tracker_log=None)

    def begin(self) -> None:
        """Create the output dir (clearing it for overwrite=true), write ``config.yaml``, find the checkpoint.

        Called once the data has been validated, so bad input never leaves a half-made run behind.
        """
        from accelerate.utils import set_seed

        if self.is_main:
            if self.config.overwrite:
                for path in own_content(self.output_dir, self.phase):
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / CONFIG_FILE).write_text(self.config.to_yaml())
            (self.output_dir / RUN_FILE).write_text(json.dumps(self.environment(), indent=2))
        self.engine.barrier()
        set_seed(self.config.seed)
        self.checkpoint = ckpt.latest_checkpoint(self.output_dir) if self.config.resume else None
        if self.trackers:
            self.accelerator.init_trackers(self.config.logging.project, config=_scalars(flatten(self.config.to_dict())))
        tracker_log = self.accelerator.log if self.trackers else None
        self.metrics = MetricsLogger(self.output_dir, self.is_main, tracker_log)

    def environment(self) -> dict[str, Any]:
        """What ran this: processes, device and library versions (written to ``run.json``)."""
        import accelerate
        import transformers

        from rewardsft._version import __version__

        return {
            "method": self.config.method,
            "world_size": self.world_size,
            "engine": self.engine.name,
            "sharding": self.engine.name if self.engine.sharded else "none",
            "device": str(self.device),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {
                "rewardsft": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "accelerate": accelerate.__version__,
            },
        }

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def rank(self) -> int:
        return self.engine.rank

    @property
    def world_size(self) -> int:
        return self.engine.world_size

    def print(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def warn(self, warning: str | None) -> None:
        """Print ``warning`` where there is one (the checks that return a message or None)."""
        if warning:
            self.print(warning)

    def progress(self, items: Iterable[T], total: int, initial: int, desc: str) -> Iterator[T]:
        enabled = self.is_main and self.config.logging.progress
        yield from tqdm(items, total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.metrics.log(step, values, echo=self.print)

    def resume_state(self) -> dict[str, Any]:
        """Recipe state of the newest checkpoint (``{"step": 0}`` when starting afresh); restores the RNG."""
        if self.checkpoint is None:
            if self.config.resume:
                self.print("resume=true but no complete checkpoint was found: starting from the beginning")
            return {"step": 0}
        state = ckpt.read_training_state(self.checkpoint)
        self.check_resume_layout(state)
        ckpt.restore_rng(self.checkpoint)
        self.metrics.truncate_after(state["step"])
        self.print(f"resumed from {self.checkpoint} (step {state['step']})")
        return state

    def check_resume_layout(self, state: dict[str, Any]) -> None:
        """A checkpoint resumes on any number of processes, sharded or not, as long as one optimiser step still
        covers the same examples (the data plan and the step count depend on the global batch)."""
        self.check_resume_engine(state)
        saved, now = state.get("global_batch"), self.global_batch
        if saved is not None and now is not None and saved != now:
            raise ConfigError(
                f"{self.checkpoint} was written with a global batch of {saved} examples per optimiser step "
                f"({state.get('world_size')} processes); this run's is {now} (train.batch_size="
                f"{self.config.train.batch_size} x train.grad_accum={self.config.train.grad_accum} x {self.world_size} "
                "processes). Set train.batch_size so the product matches, or start again with overwrite=true"
            )
        if "world_size" not in state and self.world_size > 1:
            self.print(
                "warning: this checkpoint does not record its number of processes or global batch; resume it with "
                "the same train.batch_size x processes as it was written with"
            )
        elif state.get("world_size", self.world_size) != self.world_size:
            self.print(f"resuming a {state['world_size']}-process checkpoint on {self.world_size} processes")

    def check_resume_engine(self, state: dict[str, Any]) -> None:
        """DeepSpeed's optimiser shards resume under the same ZeRO stage on as many processes as wrote them (the
        other engines write whole, name-keyed state that any of them reads)."""
        saved, now = state.get("engine", ""), self.engine.name
        if not (saved.startswith("deepspeed") or now.startswith("deepspeed")):
            return
        if saved != now or state.get("world_size") != self.world_size:
            raise ConfigError(
                f"{self.checkpoint} was written under {saved or 'an engine that did not record itself'} on "
                f"{state.get('world_size')} processes; this run is {now} on {self.world_size}. DeepSpeed's optimiser "
                "shards resume under the same ZeRO stage and process count (its ds_to_universal.py converts them for "
                "another count); launch it that way, or start again with overwrite=true"
            )

    @property
    def global_batch(self) -> int | None:
        """Examples per optimiser step over all processes; None for a recipe whose steps are not tied to a data
        plan (:attr:`EngineRules.data_plan`: RFT)."""
        if not self.rules.data_plan:
            return None
        tc = self.config.train
        return tc.batch_size * tc.grad_accum * self.world_size

    def prepare(self, model: Any, make_optimizer: OptimizerFactory) -> tuple[Any, Any]:
        """The policy and its optimiser ready to train on this run's engine (:meth:`Engine.prepare`)."""
        return self.engine.prepare(model, make_optimizer)

    def restore_optimizers(self, optimizers: ckpt.Optimizers, model: Any) -> None:
        """Load the named optimisers' and schedules' state from the checkpoint being resumed (if any);
        ``model`` is the policy the ``policy`` optimiser trains."""
        if self.checkpoint is not None:
            ckpt.restore_optimizers(self.checkpoint, optimizers, self.engine, model)

    def resume(self, optimizers: ckpt.Optimizers, model: Any) -> dict[str, Any]:
        """Restore RNG, optimisers and schedules from the newest checkpoint; returns the recipe state."""
        state = self.resume_state()
        self.restore_optimizers(optimizers, model)
        return state

    def average_gradients(self, model: torch.nn.Module) -> None:
        """Mean gradients over processes, for a model the engine does not manage (RFT's reward model)."""
        if self.world_size == 1:
            return
        for param in model.parameters():
            if param.grad is not None:
                param.grad = self.engine.reduce_tensor(param.grad, reduction="mean")

    def gather(self, items: list[T]) -> list[T]:
        """Concatenate a picklable list from every process, in rank order."""
        return self.engine.gather(items)

    def checkpoint_due(self, scheduled: bool) -> bool:
        """Write a checkpoint now: when the recipe's schedule says so, or when a SIGTERM/SIGINT asked the run to
        stop (agreed over processes, so all of them save together)."""
        return scheduled or self.stop_agreed()

    def stop_agreed(self) -> bool:
        """Whether any process has been asked to stop (a collective: every process calls it at the same point).
        A process that got no signal itself adopts SIGTERM, so all of them stop together."""
        requested = STOP.signum is not None
        if self.world_size > 1:
            requested = self.engine.reduce({"stop": float(requested)}, reduction="sum")["stop"] > 0
            if requested and STOP.signum is None:
                STOP.signum = signal.SIGTERM  # another process got the notice
        return requested

    def save_checkpoint(
        self,
        model: Any,
        optimizers: ckpt.Optimizers,
        state: dict[str, Any],
        with_base: bool = False,
        extra: Callable[[Path], None] | None = None,
    ) -> None:
        """Write ``checkpoints/step-N`` atomically; ``state`` must hold ``step``.

        ``with_base``: a LoRA run whose base weights change during training (IRFT ``snapshot=lora``) also
        saves the base weights, or a resume would rebuild the policy on the original base. ``extra`` writes
        recipe-specific files (e.g. the reward model) into the checkpoint folder before it is committed.
        """
        weights = self.engine.full_weights(model)
        # Every process takes part in gathering sharded optimiser state; rank 0 writes it.
        states = ckpt.optimizer_states(optimizers, self.engine, model)
        state = {**state, "world_size": self.world_size, "global_batch": self.global_batch, "engine": self.engine.name}
        tmp = (
            ckpt.begin_checkpoint(self.output_dir, state["step"])
            if self.is_main
            else ckpt.tmp_dir(self.output_dir, state["step"])
        )
        self.engine.barrier()
        self.engine.save_engine_state(model, tmp)
        if self.is_main:
            save_policy(self.engine.unwrap(model), tmp, state_dict=weights, with_base=with_base)
            if extra is not None:
                extra(tmp)
            ckpt.write_training_state(tmp, states, state)
            ckpt.commit_checkpoint(self.output_dir, tmp, state["step"], self.config.train.keep_checkpoints)
        self.engine.barrier()
        # Agreed again: a signal that reached one process during the save must stop all of them here, or that one
        # would exit while the others went on into the next collective and waited for it forever.
        if self.stop_agreed():
            assert STOP.signum is not None
            self.print(f"checkpoint of step {state['step']} written; stopping on {signal.Signals(STOP.signum).name}")
            raise Preempted(STOP.signum, state["step"])

    def save_final(self, model: Any, tokenizer: Any, export_adapter: bool = True) -> Path:
        """``final/``: a plain model + tokenizer (LoRA merged).

        With LoRA the adapter alone also goes to ``adapter/`` when ``export_adapter``: only where base +
        adapter reproduces ``final/``, i.e. not when training changed the base weights (IRFT ``snapshot=lora``).
        """
        weights = self.engine.full_weights(model)
        if self.is_main:
            self.write_final(self.engine.unwrap(model), tokenizer, weights, export_adapter)
        self.engine.barrier()
        # Trackers only: the process group outlives a run (an SFT phase is followed by the reward phase in the
        # same processes, and accelerate's state would not set a destroyed group up again); run_recipe ends it.
        for tracker in self.accelerator.trackers:
            tracker.finish()
        return self.output_dir / FINAL

    def write_final(
        self, model: Any, tokenizer: Any, weights: dict[str, torch.Tensor] | None, export_adapter: bool
    ) -> None:
        """Rank 0's part of :meth:`save_final`: ``model`` unwrapped, whole (or ``weights`` its whole state)."""
        final = self.output_dir / FINAL
        tmp = self.output_dir / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        if is_peft(model):
            if weights is not None:
                # Partitions (ZeRO-3): peft exports and merges from a module's own parameters, so from a CPU copy
                # holding the gathered state; the live model is left as every process has it.
                model, weights = whole_peft_copy(model, weights), None
            if export_adapter:
                model.save_pretrained(str(self.output_dir / ADAPTER))
            model = model.merge_and_unload()
        with original_dropout_config(model):
            model.save_pretrained(str(tmp), state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_model_card(tmp, self.config.to_dict(), self.output_dir.name)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    def eval_nll(self, model: Any, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int) -> float:
        """Token-weighted mean NLL of the responses, over all processes."""
        shard = list(examples)[self.rank :: self.world_size]
        batches = [shard[start : start + batch_size] for start in range(0, len(shard), batch_size)]
        nll, n_tokens = 0.0, 0
        with eval_mode(model), torch.no_grad():
            for batch, real in lockstep(batches, model, dummy=list(examples[:1])):
                tokens = model_token_logps(model, **batch_on(batch, pad_id, self.device))
                if real:
                    nll += float(-tokens.logps.sum())
                    n_tokens += int(tokens.mask.sum())
        totals = self.engine.reduce({"nll": nll, "tokens": n_tokens}, reduction="sum")
        return totals["nll"] / max(totals["tokens"], 1.0)


class StepTimer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


def _check_trackers(names: list[str]) -> list[str]:
    for name in names:
        module = TRACKER_PACKAGES.get(name)
        if module is None:
            raise ConfigError(f"logging.report_to: unknown tracker {name!r} (choose from {sorted(TRACKER_PACKAGES)})")
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"logging.report_to includes {name!r} but the package {module!r} is not installed")
    return names


def _scalars(flat: dict[str, Any]) -> dict[str, Any]:
    """Trackers take scalar hyper-parameters only."""
    return {key: value for key, value in flat.items() if isinstance(value, int | float | str | bool)}
