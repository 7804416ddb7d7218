"""A run owns its directory: concurrent launches, locks, refusals that touch nothing, sweeps
re-run with reordered values (aevb.rundir)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aevb import rundir
from aevb.errors import RunDirError

from .conftest import REPO, run_cli, tiny_overrides


def fast(data_root: Path) -> list[str]:
    """A seconds-long run: no importance sampling, no matplotlib images."""
    return [
        *tiny_overrides(data_root),
        "eval.iw_samples=0",
        "eval.iwae_ks=[]",
        "~callbacks.latent_scatter",
        "~callbacks.latent_manifold",
    ]


def digest(root: Path) -> dict[str, str]:
    """Every file below `root` (hidden ones included) -> md5 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "error" in ln.lower()]


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory) -> Path:
    """A finished run dir (2 epochs)."""
    cwd = tmp_path_factory.mktemp("rundir")
    run = cwd / "run"
    proc = run_cli([*fast(data_root), "trainer.max_epochs=2", f"hydra.run.dir={run}"], cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


def test_launches_in_the_same_second_get_their_own_dirs(data_root, tmp_path) -> None:
    """The `for b in 1 4; do aevb-train model.beta=$b & done` loop: default run dirs."""
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "aevb.train", *fast(data_root), f"model.beta={b}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in (1, 4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    runs = sorted(tmp_path.glob("outputs/*/*"))
    assert len(runs) == 2, runs
    betas = sorted(json.loads((r / "metrics.json").read_text())["hparams"]["beta"] for r in runs)
    assert betas == [1.0, 4.0]


def test_a_dir_locked_by_another_process_is_refused_and_left_alone(
    finished, data_root, tmp_path
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from aevb import rundir; from pathlib import "
            f"Path; rundir.lock(Path({str(finished)!r}), 'x'); print('locked', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = digest(finished)
        proc = run_cli([*fast(data_root), "resume=auto", f"hydra.run.dir={finished}"], tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert "in use by another aevb-train" in line and str(finished) in line
    assert digest(finished) == before


REFUSED = [
    ("no_resume", [], "already holds a run; resume it with resume=auto"),
    ("other_model", ["resume=auto", "model.latent_dim=5"], "model.latent_dim=5"),
    ("other_data", ["resume=auto", "data=fashion_mnist"], "data.name=fashion_mnist"),
    ("other_lr", ["resume=auto", "optim.lr=0.01"], "optim.lr=0.01"),
    ("other_objective", ["resume=auto", "model.beta=2"], "model.beta=2"),
]


@pytest.mark.parametrize(("case", "extra", "needle"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_refused_attempt_modifies_nothing_of_the_existing_run(
    finished, data_root, tmp_path, case, extra, needle
) -> None:
    before = digest(finished)
    proc = run_cli([*fast(data_root), *extra, f"hydra.run.dir={finished}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert line.startswith("aevb-train: error: ") and needle in line, line
    assert "Traceback" not in proc.stderr
    assert digest(finished) == before  # .hydra/config.yaml and train.log included


def test_a_checkpoint_of_other_data_is_refused_before_anything_is_created(
    finished, data_root, tmp_path
) -> None:
    new = tmp_path / "new"
    ckpt = finished / "checkpoints" / "last.ckpt"
    proc = run_cli(
        [*fast(data_root), "data=fashion_mnist", f"ckpt_path={ckpt}", f"hydra.run.dir={new}"],
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert "data.name=fashion_mnist in the config, data.name=mnist in the checkpoint" in line
    assert not new.exists()


def test_resume_auto_continues_the_same_run(finished, data_root, tmp_path) -> None:
    run = tmp_path / "copy"
    import shutil

    shutil.copytree(finished, run)
    proc = run_cli(
        [*fast(data_root), "resume=auto", "trainer.max_epochs=3", f"hydra.run.dir={run}"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 30


def _job_overrides(job: Path) -> dict[str, str]:
    items = OmegaConf.load(job / ".hydra" / "overrides.yaml")
    return dict(str(o).split("=", 1) for o in items)


def test_a_rerun_sweep_matches_jobs_by_overrides_not_numbers(data_root, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    first = run_cli(
        ["-m", *fast(data_root), "model.latent_dim=2,3", f"hydra.sweep.dir={sweep}"], tmp_path
    )
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_cli(
        ["-m", *fast(data_root), "model.latent_dim=2,3", f"hydra.sweep.dir={sweep}"], tmp_path
    )
    assert again.returncode == 2 and "already holds a sweep (2 jobs)" in again.stderr
    reordered = run_cli(
        ["-m", *fast(data_root), "model.latent_dim=3,2", "resume=auto", "trainer.max_epochs=1"]
        + [f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    assert reordered.returncode == 0, reordered.stderr[-2000:]
    jobs = sorted(p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml"))
    assert [j.name for j in jobs] == ["0", "1"]  # no new job dirs
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert str(metrics["hparams"]["latent_dim"]) == _job_overrides(job)["model.latent_dim"]
        assert "resuming from" in (job / "train.log").read_text()


def test_job_dir_names_a_new_job_by_number_or_number_and_hash(tmp_path) -> None:
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- model.beta=1\n")

    def root(*overrides: str) -> object:
        return OmegaConf.create(
            {"hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {"task": list(overrides)}}}
        )

    assert rundir.job_dir(0, _root_=root("model.beta=1", "resume=auto")) == "0"
    assert rundir.job_dir(1, _root_=root("model.beta=1")) == "0"
    assert rundir.job_dir(1, _root_=root("model.beta=4")) == "1"
    other = rundir.job_dir(0, _root_=root("model.beta=4"))
    assert other.startswith("0-") and len(other) == 10


def test_a_secondary_rank_joins_the_job_dir_its_rank_zero_names(tmp_path, monkeypatch) -> None:
    """A 2-task SLURM job resolves hydra.sweep.subdir in both processes: rank 1 waits for the
    dir holding its overrides (rank 0's), instead of naming one itself (CI, 2026-12-08: rank 1
    made "0" first, rank 0 found it taken and wrote its run to "0-<hash>")."""
    import threading

    def root(*overrides: str) -> object:
        return OmegaConf.create(
            {"hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {"task": list(overrides)}}}
        )

    def rank_zero_writes() -> None:
        (tmp_path / "0" / ".hydra").mkdir(parents=True)
        (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- model.beta=4\n")

    monkeypatch.setenv("SLURM_PROCID", "1")
    timer = threading.Timer(0.5, rank_zero_writes)
    timer.start()
    try:
        assert rundir.job_dir(0, _root_=root("model.beta=4")) == "0"
    finally:
        timer.cancel()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0"]  # nothing named by rank 1
    monkeypatch.setattr(rundir, "RANK_ZERO_DIR_TIMEOUT_S", 0.3)
    with pytest.raises(RunDirError, match="rank 0 of this job wrote no job dir"):
        rundir.job_dir(1, _root_=root("model.beta=2"))


def test_rank_variables_mark_secondary_ranks() -> None:
    assert not rundir.is_secondary_rank({})
    assert not rundir.is_secondary_rank({"LOCAL_RANK": "0", "SLURM_PROCID": "0"})
    assert rundir.is_secondary_rank({"LOCAL_RANK": "1"})
    assert rundir.is_secondary_rank({"SLURM_PROCID": "3"})


def test_repo_on_path_for_fault_callbacks() -> None:
    assert (REPO / "tests" / "faults.py").is_file()


def test_run_dir_names_every_file_and_finds_the_best_checkpoint(tmp_path: Path) -> None:
    from aevb.rundir import RunDir

    run = RunDir(tmp_path / "run")
    assert not run.is_run() and RunDir.of_checkpoint(tmp_path / "x.ckpt") is None
    run.config.parent.mkdir(parents=True)
    run.config.write_text("{}")
    assert run.is_run() and RunDir.below(tmp_path) == [run]
    with pytest.raises(FileNotFoundError, match="no checkpoints/best.ckpt"):
        run.checkpoint()
    run.checkpoints.mkdir()
    run.last_checkpoint.write_bytes(b"")
    assert run.checkpoint() == run.path / "checkpoints" / "last.ckpt" and run.has_checkpoint()
    run.best_checkpoint.write_bytes(b"")
    assert run.checkpoint() == run.path / "checkpoints" / "best.ckpt"
    assert run.relative(run.best_checkpoint) == "checkpoints/best.ckpt"
    assert run.relative(tmp_path / "elsewhere.ckpt") == str(tmp_path / "elsewhere.ckpt")
    assert RunDir.of_checkpoint(run.last_checkpoint) == RunDir(run.path.resolve())
    names = [run.metrics, run.eval, run.learning_curve, run.marginal_curve, run.figures]
    assert [p.name for p in names] == [
        "metrics.json",
        "eval.json",
        "learning_curve.json",
        "marginal_curve.json",
        "figures",
    ]
