"""fp16 mixed precision on CPU: a real ``torch.amp.GradScaler`` installed the way accelerate installs one on a GPU.

accelerate gives a CPU run no scaler (fp16 autocast is a GPU feature to it), so the loss-scaling paths that T4 and
V100 users run would never execute here. With ``ACCELERATE_MIXED_PRECISION=fp16`` (what ``accelerate launch
--mixed_precision fp16`` exports) and these two attributes set after ``Accelerator.__init__``, ``prepare`` wraps the
forward in fp16 autocast, ``backward`` scales the loss, ``clip_grad_norm_`` unscales and the prepared optimiser
steps through the scaler, skipping on overflow: accelerate's own code from there on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch


def install_scaler(accelerator: Any, init_scale: float) -> Any:
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return accelerator


@contextmanager
def fp16_accelerators(monkeypatch: pytest.MonkeyPatch, init_scale: float) -> Iterator[None]:
    """Every ``Accelerator`` created inside has fp16 mixed precision and a loss scaler starting at ``init_scale``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    original = Accelerator.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        install_scaler(self, init_scale)

    # The state is a process-wide singleton: one created without fp16 refuses an fp16 Accelerator, and ours
    # must not leak into later tests.
    AcceleratorState._reset_state(True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    monkeypatch.setattr(Accelerator, "__init__", init)
    try:
        yield
    finally:
        monkeypatch.undo()
        AcceleratorState._reset_state(True)
