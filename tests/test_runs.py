"""aevb.runs: `load_run` opens a finished run dir (a fixture written by an earlier release)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from aevb import load_run
from aevb.errors import CheckpointError
from aevb.rundir import RunDir

OLD_RUN = Path(__file__).parent / "fixtures" / "run_v0"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return Path(shutil.copytree(OLD_RUN, tmp_path / "run"))


def test_load_run_gives_the_config_model_data_and_metrics(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert run.path == run_dir.resolve() and run.metrics["status"] == "completed"
    assert type(run.model).__name__ == "VAE" and not run.model.training
    assert run.datamodule.name == "mnist" and run.datamodule.download is False
    state = torch.load(RunDir(run_dir).checkpoint(), weights_only=True)["state_dict"]
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in state.items())


def test_not_a_run_and_a_non_object_metrics_file_are_one_line_errors(
    run_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="is not an aevb run directory"):
        load_run(tmp_path)
    RunDir(run_dir).metrics.write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        load_run(run_dir)


def test_a_checkpoint_of_another_config_is_refused(run_dir: Path) -> None:
    config = RunDir(run_dir).config
    config.write_text(config.read_text().replace("latent_dim: 4", "latent_dim: 5"))
    with pytest.raises(CheckpointError, match="model.latent_dim=5 in the config"):
        load_run(run_dir)
