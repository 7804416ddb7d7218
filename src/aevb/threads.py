"""A job's share of the CPU cores: torch's intra-op threads when sweep jobs run side by side.

torch starts one intra-op thread per core. Jobs that share a machine (Hydra's joblib launcher
with `n_jobs` workers, submitit's local launcher, SLURM tasks) would each do so and
oversubscribe the cores: every parallel op then waits for a thread that is not running. So
each job of aevb-train defaults to its share (docs/sweeps.md, "Threads per job"):

1. a thread count the user set wins: OMP_NUM_THREADS or MKL_NUM_THREADS in the environment
   (set again: joblib's loky workers cap torch at cores // n_jobs even then, and get
   OMP_NUM_THREADS = cores // n_jobs from joblib when the user set none);
2. under SLURM, SLURM_CPUS_PER_TASK, the cores allocated to the task;
3. the joblib launcher: cores // n_jobs, at least 1 (n_jobs < 0 means cores + 1 + n_jobs);
4. a launcher with `cpus_per_task` (submitit local or SLURM without that variable): that;
5. otherwise (one job at a time): torch's default, one thread per core.

`thread_share` decides from its arguments alone; `apply_thread_share` reads the process and
sets torch, and exports OMP_NUM_THREADS so that child processes (Lightning's CPU DDP ranks)
keep the share. Pure torch: the launcher config arrives as a mapping, not through Hydra.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

#: environment variables through which a user sets torch's thread count explicitly
EXPLICIT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadShare:
    """torch intra-op threads for one job (None: leave torch's own choice) and why."""

    threads: int | None
    reason: str


def thread_share(
    env: Mapping[str, str], cores: int, launcher: Mapping[str, Any] | None = None
) -> ThreadShare:
    """The thread count of a job on `cores` cores, with environment `env`, launched by the Hydra
    launcher whose config is `launcher` (its `_target_`, `n_jobs`, `cpus_per_task`)."""
    for var in EXPLICIT:
        value = env.get(var, "")
        if value.isdigit() and int(value) > 0:  # set again: joblib's workers would cap it
            return ThreadShare(int(value), f"{var}={value} in the environment")
        if value:  # not a count: torch reads it as it does
            return ThreadShare(None, f"{var}={value!r} in the environment")
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return ThreadShare(int(slurm), f"SLURM_CPUS_PER_TASK={slurm}")
    launcher = launcher or {}
    target = str(launcher.get("_target_") or "")
    n_jobs = launcher.get("n_jobs")
    if target.endswith("JoblibLauncher") and isinstance(n_jobs, int) and n_jobs != 0:
        jobs = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
        return ThreadShare(max(1, cores // jobs), f"{cores} cores // joblib n_jobs={jobs}")
    cpus = launcher.get("cpus_per_task")
    if isinstance(cpus, int) and cpus > 0:
        return ThreadShare(cpus, f"launcher cpus_per_task={cpus}")
    return ThreadShare(None, "one job at a time: torch's default")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def apply_thread_share(launcher: Mapping[str, Any] | None = None) -> ThreadShare:
    """Set this job's torch threads to `thread_share` of this process (and export it in
    OMP_NUM_THREADS); call once at the start of a job, before its first parallel op."""
    share = thread_share(os.environ, available_cores(), launcher)
    if share.threads is not None:
        torch.set_num_threads(share.threads)
        os.environ["OMP_NUM_THREADS"] = str(share.threads)
    log.info("torch threads: %d (%s)", torch.get_num_threads(), share.reason)
    return share
