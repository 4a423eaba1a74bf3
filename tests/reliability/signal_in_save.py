"""``python -m tests.reliability.signal_in_save ARGS``: ``rewardsft ARGS`` (under torchrun) where a SIGTERM reaches
rank 1 alone, in the middle of the first scheduled checkpoint save, after the processes agreed that no stop was
asked for. Used by ``test_signals.py``: every process must stop after that checkpoint, none may wait alone."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from rewardsft.cli import main
from rewardsft.training import checkpoint
from rewardsft.training.signals import STOP

_original = checkpoint.optimizer_states


def _states_then_signal(*args: Any, **kwargs: Any) -> Any:
    # Every process gathers the optimiser state during a save: the notice lands on rank 1 right there.
    if os.environ.get("RANK") == "1" and STOP.signum is None:
        STOP.signum = signal.SIGTERM
    return _original(*args, **kwargs)


checkpoint.optimizer_states = _states_then_signal

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
