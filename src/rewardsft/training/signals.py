"""Graceful pre-emption: SIGTERM (the scheduler's notice) or SIGINT asks the run to stop after the current step.

The recipe's next checkpoint decision (:meth:`rewardsft.training.run.Run.checkpoint_due`) then says yes, the
checkpoint is written atomically as usual, and :class:`Preempted` ends the run with exit code 128 + signal
(143 for SIGTERM, 130 for SIGINT); ``resume=true`` continues from that step, so at most the step that was in flight
is redone. A second signal of the same kind stops at once, as without the handler.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HANDLED = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after writing a checkpoint."""

    def __init__(self, signum: int, step: int) -> None:
        self.signum, self.step = signum, step
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; its checkpoint is written: rerun with "
            "resume=true to continue"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """The signal received while a run was going, if any (read by every recipe through ``Run``)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signum:  # asked twice: stop now, as the handler we replaced would have
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGTERM/SIGINT while the block runs (main thread only; elsewhere signals keep their handlers)."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.signal(s, self._handle) for s in HANDLED}
        try:
            yield self
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)


STOP = StopRequest()
