"""Hydra multiruns through the real console script on tiny data: launchers, summary, failures,
resume of requeued jobs, the SLURM launcher config and the Optuna search."""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from aevb.config import ConfigError
from aevb.divergence import Diverged
from aevb.summarize import write_summary
from aevb.train import config_dir, resume_checkpoint

from .conftest import run_cli, tiny_overrides

GRID = {"model.latent_dim": ("2", "3"), "model.beta": ("0.5", "1.0")}
SWEEP_ARGS = [f"{k}={','.join(v)}" for k, v in GRID.items()]


def _multirun(
    data_root: Path, cwd: Path, *extra: str, search: bool = False
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A multirun of `extra` on tiny data; a command-line value fixes a key, so the tiny
    defaults of swept keys (and with `search`, of those Optuna searches) are left out."""
    sweep = cwd / "sweep"
    searched = {e.split("=")[0] for e in extra} | ({"model.latent_dim"} if search else set())
    tiny = [o for o in tiny_overrides(data_root) if o.split("=")[0] not in searched]
    args = ["-m", *tiny, f"hydra.sweep.dir={sweep}", *extra]
    return sweep, run_cli(args, cwd, timeout=400)


def _rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def _check_grid(sweep: Path, proc: subprocess.CompletedProcess[str]) -> None:
    """4 job dirs with metrics.json, and a summary (written by the callback) that matches them."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    assert all((p / "metrics.json").is_file() for p in jobs)
    rows = _rows(sweep)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {(r["model.latent_dim"], r["model.beta"]) for r in rows} == {
        (d, b) for d in GRID["model.latent_dim"] for b in GRID["model.beta"]
    }
    for row in rows:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        cfg = OmegaConf.load(sweep / row["job"] / ".hydra" / "config.yaml")
        assert int(row["model.latent_dim"]) == metrics["hparams"]["latent_dim"]
        assert int(row["model.latent_dim"]) == cfg.model.latent_dim
        assert float(row["model.beta"]) == metrics["hparams"]["beta"] == cfg.model.beta
        assert float(row["test/elbo"]) == pytest.approx(metrics["test/elbo"])
        assert float(row["test/nll"]) == pytest.approx(metrics["test/nll"])
        assert int(row["samples_seen"]) == metrics["samples_seen"] == 500
        assert float(row["wall_time_s"]) == metrics["wall_time_s"] > 0
    md = (sweep / "summary.md").read_text()
    assert md.count("| completed |") == 4


@pytest.fixture(scope="module")
def basic_grid(data_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    return _multirun(data_root, tmp_path_factory.mktemp("basic"), *SWEEP_ARGS)


def test_basic_launcher_grid(basic_grid, tmp_path: Path) -> None:
    sweep, proc = basic_grid
    _check_grid(sweep, proc)
    auto = (sweep / "summary.csv").read_text()
    write_summary(sweep, tmp_path / "again")  # what `aevb-summarize <sweep>` writes
    assert (tmp_path / "again" / "summary.csv").read_text() == auto


def test_joblib_launcher_grid(data_root: Path, tmp_path: Path) -> None:
    sweep, proc = _multirun(
        data_root, tmp_path, *SWEEP_ARGS, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"
    )
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    _check_grid(sweep, proc)
    for job in ("0", "1", "2", "3"):  # aevb.threads ran in every worker (run_cli sets OMP=1)
        log = "".join(f.read_text() for f in (sweep / job).glob("*.log"))
        assert "torch threads: 1 (OMP_NUM_THREADS=1 in the environment)" in log, log[-2000:]


def test_submitit_local_launcher_grid(data_root: Path, tmp_path: Path) -> None:
    sweep, proc = _multirun(data_root, tmp_path, *SWEEP_ARGS, "hydra/launcher=submitit_local")
    _check_grid(sweep, proc)
    assert list((sweep / ".submitit").iterdir())  # the jobs went through submitit


def test_failed_point_does_not_stop_the_sweep(data_root: Path, tmp_path: Path) -> None:
    sweep, proc = _multirun(data_root, tmp_path, "model.latent_dim=0,3")
    assert proc.returncode != 0  # Hydra reports the failed job after the others ran
    bad, good = _rows(sweep)
    assert (bad["model.latent_dim"], bad["status"]) == ("0", "failed")
    assert bad["error"] == "ConfigError: model.latent_dim must be an integer > 0, got 0"
    assert bad["test/elbo"] == "" and not (sweep / bad["job"] / "metrics.json").exists()
    assert (good["model.latent_dim"], good["status"]) == ("3", "completed")
    assert float(good["test/elbo"]) < 0
    assert "| failed | ConfigError: model.latent_dim" in (sweep / "summary.md").read_text()


def test_job_errors_survive_pickling() -> None:
    """joblib and submitit send a failed job's exception back pickled."""
    for err in (ConfigError("model.beta", "a finite number >= 0", -1.0), Diverged(7, 0, "kl")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


def test_resume_checkpoint_rules(tmp_path: Path) -> None:
    assert resume_checkpoint("auto", tmp_path) is None  # nothing to resume from
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    requeued, fresh = {"SLURM_RESTART_COUNT": "1"}, {"SLURM_RESTART_COUNT": "0"}
    assert resume_checkpoint("requeue", tmp_path, requeued) == str(last)
    assert resume_checkpoint("requeue", tmp_path, fresh) is None
    assert resume_checkpoint("requeue", tmp_path, {}) is None
    assert resume_checkpoint("auto", tmp_path, {}) == str(last)
    assert resume_checkpoint("never", tmp_path, requeued) is None
    with pytest.raises(ConfigError, match="resume must be one of"):
        resume_checkpoint("yes", tmp_path, {})


def test_requeued_job_resumes_from_last_checkpoint(
    basic_grid, data_root: Path, tmp_path: Path
) -> None:
    """A SLURM requeue re-runs a job in its dir: it continues from last.ckpt (job 0 of the grid,
    re-run in a copy of its dir with one more epoch)."""
    sweep, _ = basic_grid
    run_dir = tmp_path / "job0"
    shutil.copytree(sweep / "0", run_dir)
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    job = [str(o) for o in overrides if not str(o).startswith("trainer.max_epochs")]
    env = {"SLURM_RESTART_COUNT": "1"}  # set by SLURM in a requeued job
    proc = run_cli([*job, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["samples_seen"] == 2 * 500
    assert metrics["global_step"] == 2 * 500 // 50  # epoch 1 was not trained again


def _launcher_cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="train"):
        cfg = compose("train", list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # slurm: resources from trainer


def test_slurm_config_becomes_sbatch_flags(tmp_path: Path, monkeypatch) -> None:
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    launcher = _launcher_cfg(
        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"
    )
    assert launcher["_target_"].endswith("SlurmLauncher")
    for key in ("partition", "gpus_per_node", "timeout_min", "mem_gb", "cpus_per_task"):
        assert key in launcher
    # what SlurmLauncher.launch does with the config, up to the sbatch script
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    launcher.pop("_target_")
    launcher.pop("submitit_folder")
    executor = submitit.AutoExecutor(
        folder=tmp_path / "submitit",
        cluster="slurm",
        slurm_max_num_timeout=launcher.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    launcher["name"] = "train"
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.items()})
    sbatch = executor._executor._make_submission_file_text("python -m aevb.train", "uid")
    for flag in (
        "--partition=gpu",
        "--gpus-per-node=4",
        "--time=240",
        "--mem=16GB",
        "--cpus-per-task=4",
        "--signal=USR2@120",
    ):
        assert f"#SBATCH {flag}" in sbatch, flag


def test_local_launchers_compose() -> None:
    assert _launcher_cfg("hydra/launcher=joblib")["n_jobs"] == 2
    assert _launcher_cfg("hydra/launcher=submitit_local")["_target_"].endswith("LocalLauncher")


def test_optuna_search_maximises_the_returned_val_elbo(data_root: Path, tmp_path: Path) -> None:
    sweep, proc = _multirun(
        data_root,
        tmp_path,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",  # the shipped search space, two trials
        search=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(sweep)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(float(r["best_val/elbo"]) for r in rows))
    assert set(best["best_params"]) == {"model.latent_dim", "model.beta", "optim.lr"}
    assert best["best_params"]["model.latent_dim"] in (2, 5, 10, 20, 50)
    assert {r["model.latent_dim"] for r in rows} <= {"2", "5", "10", "20", "50"}
