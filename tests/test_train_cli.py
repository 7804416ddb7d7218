"""End to end through the real console script: train, outputs, reload, bad input."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aevb import load_run
from aevb.vae import VAE

from .conftest import REPO, run_cli, tiny_overrides


@pytest.fixture(scope="module")
def tiny_run(data_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    cwd = tmp_path_factory.mktemp("cli")
    run_dir = cwd / "run"
    proc = run_cli(
        [*tiny_overrides(data_root), "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"], cwd
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_run_writes_metrics_checkpoints_and_prints_summary(tiny_run) -> None:
    run_dir, proc = tiny_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/elbo", "test/recon", "test/kl", "test/loss", "wall_time_s"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test/elbo"] == pytest.approx(
        metrics["test/recon"] - metrics["test/kl"], abs=1e-3
    )
    assert metrics["samples_seen"] == 2 * 500 and metrics["status"] == "completed"
    assert metrics["hparams"]["latent_dim"] == 4 and metrics["hparams"]["binarize"] == "dynamic"
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"best.ckpt", "last.ckpt"}
    assert "test/elbo=" in proc.stdout


def test_event_files_hold_the_logged_tags(tiny_run) -> None:
    run_dir, _ = tiny_run
    tags: set[str] = set()
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    expected = {
        f"{s}/{t}" for s in ("train", "val", "test") for t in ("elbo", "recon", "kl", "loss")
    }
    assert expected <= tags, expected - tags


def test_checkpoint_and_load_run_reproduce_the_test_elbo(tiny_run) -> None:
    run_dir, _ = tiny_run
    model = VAE.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.hparams.latent_dim == 4
    run = load_run(run_dir)
    assert not run.model.training and run.metrics["status"] == "completed"
    run.datamodule.setup()
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = run.model.elbo(run.datamodule.test_images, samples=20)
    # same test images (same binarization seed), same weights: equal up to Monte Carlo noise
    stderr = (elbo.std() / math.sqrt(len(elbo))).item()
    assert abs(elbo.mean().item() - run.metrics["test/elbo"]) < 4 * stderr + 0.5


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.latent_dim=0", "model.latent_dim"),
        ("data.batch_size=0", "data.batch_size"),
        ("model.beta=-1", "model.beta"),
    ],
)
def test_bad_value_exits_nonzero_naming_the_key(data_root, tmp_path, override, key) -> None:
    proc = run_cli([*tiny_overrides(data_root), override, f"hydra.run.dir={tmp_path}/r"], tmp_path)
    assert proc.returncode != 0
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_installed_console_script_finds_configs_from_any_directory(tmp_path) -> None:
    exe = shutil.which("aevb-train")
    assert exe, "aevb-train is not installed (pip install -e .)"
    proc = subprocess.run(
        [exe, "--cfg", "job", "data=fashion_mnist"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: fashion_mnist" in proc.stdout and "latent_dim: 20" in proc.stdout


def test_wheel_ships_the_configs(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel offline here: {proc.stderr[-200:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("aevb-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"aevb/conf/train.yaml", "aevb/conf/data/mnist.yaml", "aevb/train.py"} <= names
    assert "aevb/training.py" in names


#: what the command line answers before it loads torch or Lightning
LIGHT_COMMANDS = [
    (["--help"], 0),
    (["--cfg", "job"], 0),
    (["model.latent_dim=0"], 2),
    (["model.latnt_dim=3"], 2),
    (["likelihood=poisson"], 2),
    (["data.batch_size=0"], 2),
]
_PROBE = """
import sys
from aevb.train import main
sys.argv = ["aevb-train", *sys.argv[1:]]
try:
    main()
    code = 0
except SystemExit as stop:
    code = stop.code or 0
heavy = sorted(m for m in ("torch", "lightning", "torchvision") if m in sys.modules)
print("HEAVY", heavy, "CODE", code, file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("args", "code"), LIGHT_COMMANDS, ids=[" ".join(a) for a, _ in LIGHT_COMMANDS]
)
def test_help_cfg_and_refusals_load_neither_torch_nor_lightning(tmp_path, args, code) -> None:
    """aevb.train checks and composes before the training code (aevb.training) is imported."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert f"HEAVY [] CODE {code}" in proc.stderr, proc.stderr[-2000:]
    if code == 2:
        assert proc.stderr.startswith("aevb-train: error: "), proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["model=conv", "--resolve", "--help"]])
def test_help_is_hydras_own_text(tmp_path, args) -> None:
    """The fast --help (aevb.preflight.app_help) prints exactly what Hydra's --help prints."""
    hydra_help = "import sys; from aevb.train import _app; sys.argv[0] = 'train'; _app()"
    ours, theirs = (
        subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        for cmd in (
            [sys.executable, "-m", "aevb.train", *args],
            [sys.executable, "-c", hydra_help, *args],
        )
    )
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert "== Configuration groups ==" in ours.stdout and "experiment/paper: " in ours.stdout
    assert ours.stdout == theirs.stdout
