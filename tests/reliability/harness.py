"""Kill-and-resume harness: runs of each recipe are SIGKILLed at random moments and resumed until they finish;
the final model must equal an uninterrupted run's, no finished stage may be regenerated, and no half-written
checkpoint or stage file may be loaded (a resume that loaded one would diverge or crash).

Runs go through ``tests/reliability/slow_phases.py``, which stretches the short phases (generation, checkpoint
write, stage cache write) with sleeps so random kills land in them, and records the phase each kill hit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tests.integration.test_sft import weights

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    recipe: str
    kills: Counter[str] = field(default_factory=Counter)
    resumes: int = 0
    equal: bool = False
    regenerated_stages: list[str] = field(default_factory=list)


def phase(run: Path) -> str:
    """What the run was doing when killed, as the stretched launcher recorded it."""
    marker = phase_file(run)
    return marker.read_text() if marker.is_file() and marker.read_text() else "startup"


def phase_file(run: Path) -> Path:
    return run.with_name(run.name + ".phase")


def stage_stamps(run: Path) -> dict[str, int]:
    """Finished stage caches and their modification times (a regenerated stage would change its time)."""
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.glob("stages/*/generations.jsonl")}


def launch(args: list[str], run: Path) -> subprocess.Popen[bytes]:
    """``rewardsft ARGS`` through the phase-stretching launcher (tests/reliability/slow_phases.py)."""
    phase_file(run).write_text("startup")  # not the previous, killed process's last phase
    env = {**os.environ, "REWARDSFT_PHASE_FILE": str(phase_file(run))}
    cmd = [sys.executable, "-m", "tests.reliability.slow_phases", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_until_started(proc: subprocess.Popen[bytes], run: Path) -> float:
    """Seconds until the run left start-up (imports, data check, model load), or until it exited."""
    start = time.monotonic()
    while phase(run) == "startup" and proc.poll() is None:
        time.sleep(0.02)
    return time.monotonic() - start


def timed_run(args: list[str], run: Path) -> float:
    """An uninterrupted run in a subprocess (the reference); returns the seconds it worked after start-up."""
    proc = launch(args, run)
    wait_until_started(proc, run)
    start = time.monotonic()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    return time.monotonic() - start


def kill_and_resume(recipe: str, make_args: Callable[[Path], list[str]], root: Path, kills: int, seed: int) -> Outcome:
    """An uninterrupted reference run, then runs SIGKILLed at random moments (one in ten during start-up, the
    rest within the reference's working time), each resumed with ``resume=true`` until it finishes, until
    ``kills`` kills have landed; every finished run's final model is compared with the reference's."""
    reference = root / f"{recipe}-reference"
    work = timed_run(make_args(reference), reference)
    rng = random.Random(seed)
    outcome = Outcome(recipe)
    equal: list[bool] = []
    while outcome.kills.total() < kills:
        run = root / f"{recipe}-killed-{len(equal)}"
        kill_until_finished(make_args, run, outcome, kills, rng, work)
        whole, resumed = weights(reference / "final"), weights(run / "final")
        equal.append(all(torch.equal(whole[name], resumed[name]) for name in whole))
    outcome.equal = all(equal)
    return outcome


def kill_until_finished(
    make_args: Callable[[Path], list[str]], run: Path, outcome: Outcome, kills: int, rng: random.Random, work: float
) -> None:
    """Launch, kill at a random moment, resume, ... until the run exits 0 (no more kills once ``kills`` have
    landed in total); records each kill's phase and any finished stage that was written again."""
    seen: dict[str, int] = {}
    while True:
        proc = launch([*make_args(run), *(["resume=true"] if run.exists() else [])], run)
        if outcome.kills.total() < kills:
            if rng.random() < 0.1:
                time.sleep(rng.uniform(0.2, 2.0))
            else:
                wait_until_started(proc, run)
                time.sleep(rng.uniform(0.0, work))
        if proc.poll() is None and outcome.kills.total() < kills:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            outcome.kills[phase(run)] += 1
            outcome.resumes += 1
        else:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()[-3000:]
        now = stage_stamps(run)
        outcome.regenerated_stages += [name for name, stamp in seen.items() if now.get(name) != stamp]
        seen = now
        if (run / "final").is_dir() and proc.returncode == 0:
            return


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    return {
        "kills": sum(o.kills.total() for o in outcomes),
        "by_recipe": {o.recipe: dict(o.kills) for o in outcomes},
        "divergent": [o.recipe for o in outcomes if not o.equal],
        "regenerated_stages": {o.recipe: o.regenerated_stages for o in outcomes if o.regenerated_stages},
    }


def write_summary(outcomes: list[Outcome], path: Path) -> None:
    path.write_text(json.dumps(summary(outcomes), indent=2))
