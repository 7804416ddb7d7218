"""Shared fixtures: tiny datasets in torchvision's raw layout and a CLI runner.

Nothing here touches ../shared or the network.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST uses (magic 0x08 = ubyte, then dims)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images: a class-dependent bar pattern plus noise, labels 0..9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.int32)
    for i, c in enumerate(labels):
        images[i, 4 + 2 * c : 7 + 2 * c, 4:24] += 200
        images[i, 4:24, 4 + 2 * c : 6 + 2 * c] += 150
    return np.clip(images, 0, 255).astype(np.uint8), labels


def make_mnist_like(root: Path, folder: str, n_train: int = 600, n_test: int = 200) -> Path:
    """Write `root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`."""
    raw = root / folder / "raw"
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding tiny MNIST and FashionMNIST (600 train / 200 test images)."""
    root = tmp_path_factory.mktemp("data")
    make_mnist_like(root, "MNIST")
    make_mnist_like(root, "FashionMNIST")
    return root


def tiny_overrides(data_root: Path) -> list[str]:
    """Overrides for a seconds-long CPU run on the tiny data."""
    return [
        f"data.root={data_root}",
        "data.download=false",
        "data.val_size=100",
        "data.batch_size=50",
        "data.eval_batch_size=100",
        "model.hidden_dims=[32]",
        "model.latent_dim=4",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]


def run_cli(
    args: list[str],
    cwd: Path,
    script: str = "aevb-train",
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a console script (through `python -m` so the current interpreter is used)."""
    module = {"aevb-train": "aevb.train"}.get(script, script)
    inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    extra = dict(env or {})
    if "PYTHONPATH" in extra and inherited.get("PYTHONPATH"):  # keep a worktree's src/ first
        extra["PYTHONPATH"] = inherited["PYTHONPATH"] + os.pathsep + extra["PYTHONPATH"]
    full_env = {**inherited, "OMP_NUM_THREADS": "1", **extra}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def interrupt_resume_compare(
    tmp_path: Path,
    common: list[str],
    interrupt: list[str],
    returncode: int,
    last_step: int,
    keys: tuple[str, ...] = ("best_val/elbo", "test/elbo", "samples_seen", "global_step"),
) -> tuple[dict, dict]:
    """Run `common` uninterrupted and with the fault `interrupt` (ending with `returncode`,
    last.ckpt at `last_step`), resume the latter from its last.ckpt, and require the same
    metrics `keys` and bit-identical final weights. Returns both final last.ckpt contents
    (uninterrupted, resumed) for further checks."""
    import torch

    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}  # tests.faults
    full = run_cli([*common, f"hydra.run.dir={tmp_path}/full"], tmp_path, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    cut = run_cli([*common, *interrupt, f"hydra.run.dir={tmp_path}/cut"], tmp_path, env=env)
    assert cut.returncode == returncode, cut.stderr[-2000:]
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == last_step
    resumed = run_cli(
        [*common, f"ckpt_path={last}", f"hydra.run.dir={tmp_path}/cut"], tmp_path, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    for key in keys:
        assert b[key] == a[key], key
    ca = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=True)
    cb = torch.load(last, weights_only=True)
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    return ca, cb
