"""A 2-job parallel sweep against one job alone: do sweep jobs share the cores (aevb.threads)?

Runs, from this process and interleaved `--repeats` times:
  (a) one job alone: `aevb-train <overrides> seed=1` (torch's default: one thread per core),
  (b) the same job twice in parallel: `aevb-train -m hydra/launcher=joblib
      hydra.launcher.n_jobs=2 <overrides> seed=1,2` (each job: its share, cores // 2 threads),
  (c) with `--oversubscribed`, (b) with OMP_NUM_THREADS=<cores> exported: every job starts one
      thread per core, as jobs did without a share.
Times are wall times of the whole command, imports and the test pass included. On C >= 2 free
cores, (b) / (a) <= 1.5 is the goal (issue 20, goal 4): two jobs of C/2 threads take at most
1.5x one job of C threads. OMP_NUM_THREADS and MKL_NUM_THREADS are removed from the jobs'
environment (except in (c)), so the defaults are what is measured.

    python benchmarks/sweep_throughput.py --data-root ../shared/data --epochs 3
    python benchmarks/sweep_throughput.py --data-root ../shared/data --oversubscribed --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_table

from aevb.threads import available_cores

#: the goal: a 2-job sweep in at most this many times one job alone (issue 20, goal 4)
GOAL = 1.5


def run(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of `python -m aevb.train ARGS`; raises with its stderr tail on failure."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "aevb.train", *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"sweep_throughput: aevb-train {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
        )
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", required=True, help="folder holding MNIST/raw")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="(a), (b) [, (c)] rounds")
    p.add_argument("--oversubscribed", action="store_true", help="also time (c)")
    p.add_argument("overrides", nargs="*", help="more aevb-train overrides (e.g. trainer=cpu)")
    args = p.parse_args()
    cores = available_cores()
    job = [
        f"data.root={args.data_root}",
        "data.download=false",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    sweep = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *job, "seed=1,2"]
    times: dict[str, list[float]] = {"alone": [], "sweep": [], "oversubscribed": []}
    with tempfile.TemporaryDirectory(prefix="aevb-sweep-bench-") as tmp:
        for r in range(args.repeats):
            times["alone"].append(run([*job, "seed=1", f"hydra.run.dir={tmp}/alone{r}"], env))
            times["sweep"].append(run([*sweep, f"hydra.sweep.dir={tmp}/sweep{r}"], env))
            if args.oversubscribed:
                every_core = {**env, "OMP_NUM_THREADS": str(cores)}
                times["oversubscribed"].append(
                    run([*sweep, f"hydra.sweep.dir={tmp}/over{r}"], every_core)
                )
    alone = statistics.median(times["alone"])
    print(
        f"one job: MNIST, {args.epochs} epoch(s), overrides {args.overrides or 'none'}; "
        f"{cores} cores; {args.repeats} round(s), medians"
    )
    labels = {
        "alone": "(a) one job alone",
        "sweep": "(b) 2-job joblib sweep",
        "oversubscribed": f"(c) (b), OMP_NUM_THREADS={cores}",
    }
    rows = [
        {
            "path": labels[name],
            "seconds": statistics.median(ts),
            "all": " ".join(f"{t:.1f}" for t in ts),
            "x alone": statistics.median(ts) / alone,
        }
        for name, ts in times.items()
        if ts
    ]
    print_table(rows, ["path", "seconds", "all", "x alone"])
    ratio = statistics.median(times["sweep"]) / alone
    print(
        f"goal 4: 2-job joblib sweep = {ratio:.2f}x one job alone on {cores} cores "
        f"({'meets' if ratio <= GOAL else 'misses'} <= {GOAL}x)"
    )


if __name__ == "__main__":
    main()
