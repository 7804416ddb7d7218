"""A sweep job's share of the cores (aevb.threads): joblib n_jobs, SLURM, explicit settings."""

from __future__ import annotations

import os

import pytest
import torch

from aevb.threads import apply_thread_share, thread_share

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@pytest.mark.parametrize(
    ("cores", "n_jobs", "threads"),
    [(2, 2, 1), (2, 1, 2), (8, 3, 2), (16, 4, 4), (2, 5, 1), (4, -1, 1), (8, -2, 1), (8, -5, 2)],
)
def test_joblib_jobs_share_the_cores(cores: int, n_jobs: int, threads: int) -> None:
    share = thread_share({}, cores, {"_target_": JOBLIB, "n_jobs": n_jobs})
    assert share.threads == threads, share


def test_slurm_cpus_per_task_is_the_share() -> None:
    env = {"SLURM_CPUS_PER_TASK": "3", "SLURM_JOB_ID": "7"}
    assert thread_share(env, 64, {"_target_": SLURM, "cpus_per_task": 4}).threads == 3
    assert thread_share(env, 64, {"_target_": BASIC}).threads == 3  # aevb-train inside srun
    # submitit's local launcher sets no SLURM variables: its cpus_per_task is the share
    assert thread_share({}, 64, {"_target_": LOCAL, "cpus_per_task": 6}).threads == 6
    assert thread_share({}, 64, {"_target_": LOCAL, "cpus_per_task": None}).threads is None


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_an_explicit_thread_count_wins(var: str) -> None:
    env = {var: "3", "SLURM_CPUS_PER_TASK": "8"}
    for launcher in ({"_target_": JOBLIB, "n_jobs": 4}, {"_target_": SLURM, "cpus_per_task": 8}):
        share = thread_share(env, 16, launcher)
        assert share.threads == 3 and var in share.reason
    # not a count: left to torch, which reads the variable itself
    assert thread_share({var: "auto"}, 16, {"_target_": JOBLIB, "n_jobs": 4}).threads is None


def test_one_job_at_a_time_keeps_torch_default() -> None:
    assert thread_share({}, 8, {"_target_": BASIC}).threads is None
    assert thread_share({}, 8, None).threads is None
    assert thread_share({"SLURM_CPUS_PER_TASK": ""}, 8, {}).threads is None


def test_apply_sets_torch_and_exports_the_share(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.setenv(var, "")  # records the value to restore, which apply changes
        monkeypatch.delenv(var)
    monkeypatch.setattr("aevb.threads.available_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        share = apply_thread_share({"_target_": JOBLIB, "n_jobs": 2})
        assert share.threads == 2 and torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == "2"  # child processes keep the share
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # explicit: wins over the share
        assert apply_thread_share({"_target_": JOBLIB, "n_jobs": 4}).threads == 3
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
