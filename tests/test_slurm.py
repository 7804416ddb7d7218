"""What a live SLURM cluster showed (scripts/slurm_e2e.sh runs the cluster itself in CI)."""

from __future__ import annotations

from pathlib import Path

import cloudpickle
import pytest

import aevb.train
from aevb.train import resume_checkpoint


def test_a_requeued_job_sees_slurms_restart_count_after_pickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submitit pickles the functions of `python -m aevb.train` by value; the environment must
    be read in the job, not copied from the submitting process."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)  # the submitting process
    cloudpickle.register_pickle_by_value(aevb.train)
    try:
        shipped = cloudpickle.dumps(resume_checkpoint)
    finally:
        cloudpickle.unregister_pickle_by_value(aevb.train)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeued job
    assert cloudpickle.loads(shipped)("requeue", tmp_path) == str(last)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert cloudpickle.loads(shipped)("requeue", tmp_path) is None
