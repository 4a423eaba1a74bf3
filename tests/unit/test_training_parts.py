import json
from pathlib import Path

import pytest
import torch

from rewardsft.config import OptimConfig
from rewardsft.training import checkpoint as ckpt
from rewardsft.training.batches import plan_steps, steps_per_epoch, total_steps
from rewardsft.training.engine import Engine
from rewardsft.training.optim import build_optimizer, build_scheduler, lr_factor


def test_each_epoch_sees_every_example_once() -> None:
    steps = list(plan_steps(10, batch_size=3, grad_accum=2, n_steps=4, seed=1))
    assert steps_per_epoch(10, 3, 2, 1) == 2
    for epoch in range(2):
        seen = [i for s in steps[2 * epoch : 2 * epoch + 2] for mb in s.micro_batches for i in mb]
        assert sorted(seen) == list(range(10))
    assert [s.epoch for s in steps] == [0.6, 1.0, 1.6, 2.0]
    first, second = ([i for s in steps[a : a + 2] for mb in s.micro_batches for i in mb] for a in (0, 2))
    assert first != second  # reshuffled each epoch


def test_ranks_split_each_micro_batch() -> None:
    per_rank = [
        list(plan_steps(7, batch_size=2, grad_accum=1, n_steps=2, seed=0, rank=r, world_size=2)) for r in (0, 1)
    ]
    for step in range(2):
        a, b = per_rank[0][step].micro_batches[0], per_rank[1][step].micro_batches[0]
        assert a and b and not set(a) & set(b)
    assert total_steps(7, 2, 1, 2, epochs=1, max_steps=None) == 2


def test_resume_plan_is_the_tail_of_the_full_plan() -> None:
    full = list(plan_steps(9, batch_size=2, grad_accum=2, n_steps=7, seed=3))
    tail = list(plan_steps(9, batch_size=2, grad_accum=2, n_steps=7, seed=3, start_step=4))
    assert tail == full[4:]


def test_lr_schedule_by_hand() -> None:
    # 10 steps, 2 warm-up: 0.5, 1.0, then linear decay over the 8 remaining steps.
    assert [lr_factor(s, 10, 2, "linear") for s in range(4)] == [0.5, 1.0, 1.0, 0.875]
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(9, 10, 2, "constant") == 1.0
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], OptimConfig(name="rmsprop", lr=1.0, warmup_ratio=0.2))
    assert isinstance(optimizer, torch.optim.RMSprop)
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1.0, warmup_ratio=0.2), total_steps=10)
    lrs = []
    for _ in range(4):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == [0.5, 1.0, 1.0, 0.875]


def test_incomplete_checkpoints_are_ignored_and_old_ones_pruned(tmp_path: Path) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    engine = Engine(accelerator=None)  # one plain process: the optimiser's own state_dict
    for step in (2, 4, 6):
        tmp = ckpt.begin_checkpoint(tmp_path, step)
        states = ckpt.optimizer_states({"policy": (optimizer, scheduler)}, engine, policy=None)
        ckpt.write_training_state(tmp, states, {"step": step})
        ckpt.commit_checkpoint(tmp_path, tmp, step, keep=2)
    half = ckpt.begin_checkpoint(tmp_path, 8)  # a run killed while writing step 8
    (tmp_path / "checkpoints" / "step-10").mkdir()  # a folder without state.json is incomplete
    assert half.exists()
    assert [s for s, _ in ckpt.checkpoint_dirs(tmp_path)] == [4, 6]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and json.loads((latest / "state.json").read_text())["step"] == 6


@pytest.mark.parametrize("prepared", [True, False])
def test_optimizer_step_clips_and_reports_the_norm_before_clipping(prepared: bool) -> None:
    from accelerate import Accelerator

    from rewardsft.training.engine import AccelerateEngine
    from rewardsft.training.step import optimizer_step

    engine = AccelerateEngine(Accelerator(cpu=True)) if prepared else None  # None: a model no engine manages
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5**s)
    param.grad = torch.tensor([3.0, 4.0])  # norm 5
    stats = optimizer_step(engine, [param], optimizer, scheduler, max_grad_norm=1.0)
    assert stats.grad_norm == pytest.approx(5.0) and stats.lr == 1.0
    assert param.detach().tolist() == pytest.approx([-0.6, -0.8])  # one step along the clipped gradient (norm 1)
    assert param.grad is None and scheduler.get_last_lr() == [0.5]
    param.grad = torch.tensor([3.0, 4.0])
    stats = optimizer_step(engine, [param], optimizer, scheduler, max_grad_norm=None)
    assert stats.grad_norm == pytest.approx(5.0) and stats.lr == 0.5
    assert param.detach().tolist() == pytest.approx([-0.6 - 1.5, -0.8 - 2.0])  # unclipped


def test_derive_seed_is_stable_and_separates_streams() -> None:
    from rewardsft.training.step import derive_seed

    assert derive_seed(1, "irft/generate", 0, 0) == derive_seed(1, "irft/generate", 0, 0)
    seeds = {
        derive_seed(s, p, stage, 0) for s in (0, 1, 2) for p in ("irft/generate", "rft/generate") for stage in (0, 1, 2)
    }
    assert len(seeds) == 18  # seed 1 stage 0 never replays seed 0 stage 1 (as seed + stage would)
    assert all(0 <= s < 2**63 for s in seeds)


def test_eval_mode_restores_each_models_mode() -> None:
    from rewardsft.models import eval_mode

    training, frozen = torch.nn.Linear(1, 1).train(), torch.nn.Linear(1, 1).eval()
    with eval_mode(training, frozen):
        assert not training.training and not frozen.training
    assert training.training and not frozen.training
