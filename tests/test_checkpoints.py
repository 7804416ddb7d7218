"""Checkpoints: last.ckpt every epoch and at the end, atomic on a full disk, never running code,
refused for another config (aevb.checkpoints)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from aevb import atomic, checkpoints, runs

from .conftest import REPO, run_cli, tiny_overrides
from .fs import read_only, small_tmpfs
from .test_rundir import error_lines, fast

ENV = {"PYTHONPATH": str(REPO)}  # tests.faults importable by the runs


def test_last_ckpt_is_rewritten_every_epoch_and_at_the_end_of_training(data_root, tmp_path) -> None:
    """best.ckpt never improves after epoch 0 (injected), a budget ends mid-epoch 2."""
    run = tmp_path / "run"
    proc = run_cli(
        [*fast(data_root), "trainer.max_epochs=5", "budget_samples=1250"]
        + ["+callbacks.fault._target_=tests.faults.NoImprovement", f"hydra.run.dir={run}"],
        tmp_path,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    last = checkpoints.load(run / "checkpoints" / "last.ckpt")
    best = checkpoints.load(run / "checkpoints" / "best.ckpt")
    assert metrics["global_step"] == 25  # 1250 samples / 50 per batch
    assert last["global_step"] == 25 and best["global_step"] == 10
    assert last[checkpoints.IDENTITY_KEY]["model.latent_dim"] == 4


def test_a_crash_mid_checkpoint_leaves_the_previous_file(tmp_path, monkeypatch) -> None:
    io = checkpoints.AtomicCheckpointIO({"model.latent_dim": 4})
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, target)
    before = target.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space") as err:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, target)
    assert err.value.filename == str(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert io.load_checkpoint(target)["global_step"] == 1


def test_a_disk_that_fills_up_ends_in_one_line_and_keeps_loadable_checkpoints(
    data_root, tmp_path
) -> None:
    with small_tmpfs(tmp_path / "small", 1100) as small:  # room for one checkpoint, not two
        run = small / "run"
        proc = run_cli(
            [*fast(data_root), "trainer.max_epochs=2", "~logger", f"hydra.run.dir={run}"],
            tmp_path,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        (line,) = error_lines(proc.stderr)
        assert "No space left on device" in line and str(run) in line, line
        assert "Traceback" not in proc.stderr
        for ckpt in run.rglob("*.ckpt"):
            checkpoints.load(ckpt)  # complete, never truncated
        assert not list(run.rglob("*.tmp"))


def test_a_full_tmpdir_does_not_matter(data_root, tmp_path) -> None:
    with small_tmpfs(tmp_path / "tmp", 64) as tmp:
        (tmp / "filler").write_bytes(b"\0" * (60 << 10))
        proc = run_cli(
            [*fast(data_root), f"hydra.run.dir={tmp_path / 'run'}"],
            tmp_path,
            env={"TMPDIR": str(tmp)},
        )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_read_only_output_dir_is_refused_in_one_line(data_root, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with read_only(out):
        proc = run_cli([*fast(data_root), f"hydra.run.dir={out}/run"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert f"{out}/run" in line and "Read-only file system" in line and "Traceback" not in line


class Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_copy(ckpt: Path, dest: Path, marker: Path) -> Path:
    content = torch.load(ckpt, weights_only=True)
    content["hyper_parameters"]["payload"] = Payload(marker)
    torch.save(content, dest)
    return dest


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(
    finished, data_root, tmp_path
) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_copy(finished / "checkpoints" / "last.ckpt", tmp_path / "evil.ckpt", marker)
    with pytest.raises(checkpoints.CheckpointError, match="refused, it holds more than tensors"):
        checkpoints.load(evil)
    proc = run_cli([*fast(data_root), f"ckpt_path={evil}", f"hydra.run.dir={tmp_path}/r"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert "ckpt_path" in line and "refused" in line
    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    _evil_copy(finished / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt", marker)
    proc = run_cli([str(run)], tmp_path, script="aevb.evaluate")
    assert proc.returncode == 2 and "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_loading_a_checkpoint_that_would_run_code_is_refused(tmp_path) -> None:
    """The in-process half of the scenario above, on the stored 1-epoch checkpoint."""
    marker = tmp_path / "pwned"
    evil = _evil_copy(OLD_RUN / "checkpoints" / "last.ckpt", tmp_path / "evil.ckpt", marker)
    with pytest.raises(checkpoints.CheckpointError, match="refused, it holds more than tensors"):
        checkpoints.load(evil)
    assert not marker.exists()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(evil.read_bytes()[: evil.stat().st_size // 2])
    with pytest.raises(checkpoints.CheckpointError, match="truncated or corrupt"):
        checkpoints.load(truncated)


def test_aevb_eval_of_a_corrupt_checkpoint_is_one_line(finished, tmp_path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(finished, run)
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    proc = run_cli([str(run)], tmp_path, script="aevb.evaluate")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = error_lines(proc.stderr)
    assert str(best) in line and "truncated or corrupt" in line and "Traceback" not in proc.stderr


def test_load_run_refuses_a_checkpoint_of_another_config(finished, data_root, tmp_path) -> None:
    other = tmp_path / "other"
    proc = run_cli([*fast(data_root), "model.beta=3", f"hydra.run.dir={other}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with pytest.raises(checkpoints.CheckpointError, match="model.beta=1.0 in the config"):
        runs.load_run(finished, checkpoint=other / "checkpoints" / "last.ckpt")
    assert runs.load_run(finished).model.hparams.beta == 1.0


def test_load_run_and_summaries_name_a_metrics_json_that_is_not_an_object(tmp_path) -> None:
    from aevb import summarize

    run = tmp_path / "copy"
    shutil.copytree(OLD_RUN, run)
    (run / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="metrics.json holds a JSON list, not an object"):
        runs.load_run(run)
    row = summarize.read_job(run)
    assert row["status"] == "failed" and "not a JSON object" in row["error"]


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("ckpt")
    run = cwd / "run"
    proc = run_cli([*fast(data_root), f"hydra.run.dir={run}"], cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


def test_run_checkpoint_restores_the_state_of_a_plain_model_checkpoint() -> None:
    """Runs started before RunCheckpoint saved their best-checkpoint record under Lightning's
    ModelCheckpoint key: a resume must find it (else the first validation becomes "best")."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from aevb.checkpoints import RunCheckpoint

    kwargs = {"dirpath": "/x/checkpoints", "monitor": "val/elbo", "mode": "max"}
    assert RunCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key
    with pytest.raises(ValueError, match="last_every_n_epochs must be an integer >= 1"):
        RunCheckpoint(last_every_n_epochs=0, **kwargs)


#: a 1-epoch run (tiny data, hidden_dims=[8], latent_dim=4) written by the code before the
#: registry/RunDir refactor (issue 19): runs of a long campaign resume across such changes
OLD_RUN = Path(__file__).parent / "fixtures" / "run_v0"


def test_a_checkpoint_of_an_earlier_release_loads_and_resumes(
    data_root: Path, tmp_path: Path
) -> None:
    run = runs.load_run(OLD_RUN)
    assert run.cfg.model.hidden_dims == [8] and not run.model.training
    x = torch.rand(3, *run.model.data_shape)
    assert torch.isfinite(run.model.elbo(x)).all()
    ckpt = tmp_path / "old.ckpt"
    shutil.copy(OLD_RUN / "checkpoints" / "last.ckpt", ckpt)
    quiet = ["eval.iw_samples=0", "eval.iwae_ks=[]", "~callbacks.latent_scatter"]
    args = [*tiny_overrides(data_root), "model.hidden_dims=[8]", *quiet]
    args += ["~callbacks.latent_manifold", "trainer.max_epochs=2", f"ckpt_path={ckpt}"]
    done = run_cli([*args, f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 20 and metrics["samples_seen"] == 1000
