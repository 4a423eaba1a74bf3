"""Cost curves through the real CLI (`python -m rewardsft.cli train ...`), each point its own process.

    .venv/bin/python -m benchmarks.cost_curves --out benchmarks/results/cost_curves_cpu.json
    .venv/bin/python -m benchmarks.cost_curves --size tiny --out /tmp/cost.json      # smoke run

(a) IRFT time of one stage against the number of demonstrations (``data.max_rows``), with a least-squares line
and R²; (b) IRFT total time against T (``irft.stages``) on the same rows; (c) RFT time per round against
``rft.samples_per_prompt``; (d) one process with OMP_NUM_THREADS=2 against two (torchrun, gloo) with
OMP_NUM_THREADS=1 each at the same global batch (``train.batch_size`` halves), wall time and each process's peak
RSS (VmHWM read from /proc while it runs, every 0.1 s).

The model is ``rewardsft.tiny.write_tiny_model`` (a random Llama, hidden 512, 8 layers, ~19M parameters) and the
data the built-in rows, repeated to the largest row count. Hidden 128 / 4 layers was too small: a 128-row IRFT run
took 6.2 s, of which the stage was 2.5 s and imports + export 3.7 s; at 512 / 8 the stage is ~80% of the run. Phases of an IRFT run come from the run itself:
``time/step_s`` in metrics.jsonl (training) and the times the run writes its files: config.yaml (start),
stages/stage-k/generations.jsonl (end of sampling), ref_logps.rank0.pt (end of the snapshot log-probs) and the
checkpoint of each stage (end of the stage); ``startup_s`` is launch to config.yaml (imports), ``final_s`` the
last checkpoint to exit (final/ export and interpreter exit). Identical runs are made once and reused (the T=1
point of (b) and the one-process point of (d) are the largest point of (a)).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.contention import OtherLoad, write_report
from rewardsft.training.metrics import read_metrics

SETTINGS = {
    "default": {"hidden": 512, "layers": 8, "rows": "16,32,64,128", "stages": "1,2,4", "samples": "2,4,8"},
    "tiny": {"hidden": 32, "layers": 2, "rows": "8,16", "stages": "1,2", "samples": "2"},
}
TORCHRUN = Path(sys.executable).with_name("torchrun")


def common_args(args: argparse.Namespace) -> list[str]:
    return [
        "optim.name=adamw",
        "optim.lr=1e-4",
        "data.max_length=64",
        "data.max_prompt_length=32",
        f"generation.max_new_tokens={args.new_tokens}",
        "generation.batch_size=16",
        "logging.progress=false",
        "train.keep_checkpoints=1000",  # every stage's checkpoint stays, to read when the stage ended
    ]


class PeakRss:
    """Highest VmHWM (peak resident set) of every process in a tree, read from /proc every 0.1 s while it runs."""

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.peaks: dict[int, tuple[str, float]] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.is_set():
            for pid in [self.root, *descendants(self.root)]:
                self._sample(pid)
            time.sleep(0.1)

    def _sample(self, pid: int) -> None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return  # exited between listing and reading
        line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), None)
        if line:
            self.peaks[pid] = ("launcher" if "torchrun" in cmdline else "trainer", int(line.split()[1]) / 1024)

    def stop(self) -> dict[str, list[float]]:
        self.done.set()
        self.thread.join()
        out: dict[str, list[float]] = {}
        for role, mb in self.peaks.values():
            out.setdefault(role, []).append(round(mb, 1))
        return out


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (parent ids from /proc/PID/stat)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        kids = [pid for pid, ppid in parent.items() if ppid in frontier]
        found += kids
        frontier = kids
    return found


def cli_run(cli: list[str], env: dict[str, str], out: Path, torchrun: bool = False) -> dict[str, Any]:
    """Run one training command; wall time, per-process peak RSS and the run's phase times."""
    prefix = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29631"] if torchrun else [sys.executable]
    cmd = [*prefix, "-m", "rewardsft.cli", *cli, f"output_dir={out}"]
    launched = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
    rss = PeakRss(proc.pid)
    log, _ = proc.communicate()
    ended = time.time()
    peaks = rss.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log[-3000:]}")
    result = {"wall_s": ended - launched, "peak_rss_mb": peaks}
    return result | phases(out, launched, ended)


def phases(out: Path, launched: float, ended: float) -> dict[str, Any]:
    """Per-phase seconds of an IRFT run (see the module docstring); for RFT the rounds' ``time/iteration_s``."""
    records = read_metrics(out / "metrics.jsonl")
    start = (out / "config.yaml").stat().st_mtime
    rounds = [r["time/iteration_s"] for r in records if "time/iteration_s" in r]
    if rounds:
        return {"startup_s": start - launched, "round_s": rounds, "median_round_s": sorted(rounds)[len(rounds) // 2]}
    parts = {"startup_s": start - launched, "generation_s": 0.0, "snapshot_s": 0.0, "train_s": 0.0, "checkpoint_s": 0.0}
    stage_dirs = sorted((out / "stages").glob("stage-*"), key=lambda p: int(p.name.split("-")[1]))
    ckpts = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    previous = start
    for k, (stage, ckpt) in enumerate(zip(stage_dirs, ckpts, strict=True), start=1):
        sampled = (stage / "generations.jsonl").stat().st_mtime
        snap = (stage / "ref_logps.rank0.pt").stat().st_mtime
        train = sum(r["time/step_s"] for r in records if r.get("irft/stage") == k and "time/step_s" in r)
        end = max(p.stat().st_mtime for p in ckpt.rglob("*"))
        parts["generation_s"] += sampled - previous
        parts["snapshot_s"] += snap - sampled
        parts["train_s"] += train
        parts["checkpoint_s"] += end - snap - train  # also the per-step logging
        previous = end
    return parts | {"stages_s": previous - start, "final_s": ended - previous, "stages": len(stage_dirs)}


def fit_line(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares y = a + b·x and R²; None with fewer than two distinct x."""
    n = len(xs)
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"intercept": intercept, "slope": slope, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


class Runner:
    """Makes each distinct run once (keyed by its command and environment)."""

    def __init__(self, workdir: Path, threads: int) -> None:
        self.workdir, self.threads = workdir, threads
        self.cache: dict[str, dict[str, Any]] = {}

    def run(self, cli: list[str], torchrun: bool = False) -> dict[str, Any]:
        env = {"OMP_NUM_THREADS": "1" if torchrun else str(self.threads)}
        key = json.dumps([cli, torchrun, env])
        if key in self.cache:
            return self.cache[key] | {"reused": True}
        result = cli_run(cli, env, self.workdir / f"run-{len(self.cache)}", torchrun)
        self.cache[key] = result
        print(
            f"{' '.join(cli[:2])} {' '.join(a for a in cli if a.split('=')[0] in KEYS)}"
            f"{' (torchrun)' if torchrun else ''}: {result['wall_s']:.1f} s",
            flush=True,
        )
        return result


KEYS = ("data.max_rows", "irft.stages", "rft.samples_per_prompt", "train.batch_size")


def irft_cli(base: list[str], rows: int, stages: int, batch: int) -> list[str]:
    return ["train", "irft", *base, f"data.max_rows={rows}", f"irft.stages={stages}", f"train.batch_size={batch}"]


def curves(args: argparse.Namespace, runner: Runner, base: list[str]) -> dict[str, Any]:
    """The parts of ``args.parts`` (a, b, c, d), in that order; a run another part already made is reused."""
    rows = [int(x) for x in args.rows.split(",")]
    out: dict[str, Any] = {}
    if "a" in args.parts:
        by_rows = {n: runner.run(irft_cli(base, n, 1, 8)) for n in rows}
        xs = [float(n) for n in rows]
        out["a_irft_stage_vs_rows"] = {"runs": by_rows} | {
            f"fit_{key}": fit_line(xs, [r[key] for r in by_rows.values()]) for key in ("stages_s", "wall_s", "train_s")
        }
    if "b" in args.parts:
        by_stages = {t: runner.run(irft_cli(base, rows[-1], t, 8)) for t in ints(args.stages)}
        out["b_irft_total_vs_stages"] = {"rows": rows[-1], "runs": by_stages}
    if "c" in args.parts:
        rft = {k: runner.run(rft_cli(base, rows[-1], k, args)) for k in ints(args.samples)}
        fit = fit_line([float(k) for k in rft], [r["median_round_s"] for r in rft.values()])
        out["c_rft_round_vs_samples"] = {"rows": rows[-1], "prompts_per_round": args.rft_prompts, "runs": rft}
        out["c_rft_round_vs_samples"]["fit_median_round_s"] = fit
    if "d" in args.parts:
        one = runner.run(irft_cli(base, rows[-1], 1, 8))
        two = runner.run(irft_cli(base, rows[-1], 1, 4), torchrun=True)
        out["d_processes"] = {"one_process_omp2_batch8": one, "two_processes_omp1_batch4": two}
    return out


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def rft_cli(base: list[str], rows: int, samples: int, args: argparse.Namespace) -> list[str]:
    return [
        "train",
        "rft",
        *base,
        f"data.max_rows={rows}",
        f"rft.samples_per_prompt={samples}",
        f"rft.prompts_per_iteration={args.rft_prompts}",
        f"rft.iterations={args.rft_rounds}",
        "train.batch_size=16",
    ]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SETTINGS), default="default")
    parser.add_argument("--new-tokens", type=int, default=16, help="generation.max_new_tokens")
    parser.add_argument("--rft-prompts", type=int, default=8, help="rft.prompts_per_iteration")
    parser.add_argument("--rft-rounds", type=int, default=3, help="rft.iterations")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS of one process")
    parser.add_argument("--parts", default="a,b,c,d", help="which curves to measure (see the module docstring)")
    parser.add_argument("--out", default="benchmarks/results/cost_curves.json")
    args = parser.parse_args()
    for key, value in SETTINGS[args.size].items():
        setattr(args, key, value)
    if args.size == "tiny":
        args.new_tokens, args.rft_prompts, args.rft_rounds = 4, 4, 1
    return args


def main() -> None:
    from rewardsft.data.builtin import builtin_rows
    from rewardsft.tiny import write_tiny_model

    args = parse()
    started, others = time.perf_counter(), OtherLoad()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_model(Path(tmp) / "model", hidden_size=args.hidden, layers=args.layers)
        rows = builtin_rows()
        data = Path(tmp) / "rows.jsonl"
        n = max(int(x) for x in args.rows.split(","))
        data.write_text("".join(json.dumps(rows[i % len(rows)]) + "\n" for i in range(n)))
        base = [f"model.name_or_path={model}", f"data.path={data}", *common_args(args)]
        report: dict[str, Any] = {"settings": vars(args) | {"cli_common": common_args(args)}}
        report |= curves(args, Runner(Path(tmp), args.threads), base)
    write_report(args.out, report, started, others)


if __name__ == "__main__":
    main()
