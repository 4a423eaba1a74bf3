"""How much CPU other processes used during a benchmark: on a shared 2-core machine their load, not the code,
can set the times (OpenMP threads that lose their core slow down a whole parallel region)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class OtherLoad:
    """Average cores busy with other processes between construction and :meth:`cores`: the machine's busy time
    (/proc/stat) minus this process's and its waited-for children's CPU time (``os.times``)."""

    def __init__(self) -> None:
        self.start = (time.perf_counter(), machine_busy_s(), own_cpu_s())

    def cores(self) -> float:
        wall, busy, own = (
            now - then
            for now, then in zip((time.perf_counter(), machine_busy_s(), own_cpu_s()), self.start, strict=True)
        )
        return max(busy - own, 0.0) / wall


def machine_busy_s() -> float:
    """Seconds of CPU time all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def write_report(out: str, report: dict[str, Any], started: float, others: OtherLoad) -> None:
    """Add the wall time and the other processes' load (above ~0.2 cores the times are not the code's alone),
    then write ``report`` as JSON to ``out``."""
    report["wall_s"] = time.perf_counter() - started
    report["other_processes_cores"] = others.cores()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
