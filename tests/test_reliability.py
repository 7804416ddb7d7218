"""Bad input refused in one line, divergence caught, crashes resumable, writes atomic."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from aevb import atomic, data, train
from aevb.data import DataError
from aevb.vae import VAE

from .conftest import REPO, run_cli, tiny_overrides, write_idx


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def outputs(data_root, tmp_path_factory) -> Path:
    """A launch dir whose outputs/ already holds one finished run (must never be touched)."""
    cwd = tmp_path_factory.mktemp("reliability")
    proc = run_cli(
        [*tiny_overrides(data_root), "trainer.limit_train_batches=2", "hydra.run.dir=outputs/old"],
        cwd,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cwd


def _broken_root(tmp_path: Path, data_root: Path, case: str) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(data_root / "MNIST", root / "MNIST")
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    if case == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif case == "magic":
        raw = bytearray(images.read_bytes())
        raw[2] = 0x0D  # float32 instead of unsigned byte
        images.write_bytes(bytes(raw))
    elif case == "shape":
        write_idx(images, np.zeros((600, 28, 27), dtype=np.uint8))
    return root


def _frey_root(tmp_path: Path, case: str) -> Path:
    raw = tmp_path / "frey" / "FreyFace" / "raw"
    raw.mkdir(parents=True)
    rows = 784 if case == "frey_shape" else 560  # 28x28 instead of 28x20 faces
    ff = np.zeros((rows, 1965), np.uint8)
    key = "faces" if case == "frey_key" else "ff"
    scipy.io.savemat(raw / "frey_rawface.mat", {key: ff})
    return tmp_path / "frey"


# (case, overrides, text the one-line message must contain)
BAD_INPUTS = [
    ("latent_zero", ["model.latent_dim=0"], "model.latent_dim"),
    ("latent_negative", ["model.latent_dim=-3"], "model.latent_dim"),
    ("beta", ["model.beta=-1"], "model.beta"),
    ("likelihood", ["likelihood=nosuch"], "likelihood=nosuch"),
    ("data", ["data=nosuch"], "data=nosuch"),
    ("batch_size", ["data.batch_size=0"], "data.batch_size"),
    ("lr_nan", ["optim.lr=nan"], "optim.lr"),
    ("lr_zero", ["optim.lr=0"], "optim.lr"),
    ("unknown_key", ["model.latnt_dim=3"], "model.latnt_dim"),
    ("missing_files", ["data.root={tmp}/empty"], "train-images-idx3-ubyte"),
    ("truncated", ["data.root={broken}"], "train-images-idx3-ubyte is truncated"),
    ("magic", ["data.root={broken}"], "magic"),
    ("shape", ["data.root={broken}"], "expected (28, 28)"),
    ("frey_key", ["data=frey_face", "likelihood=gaussian", "data.root={frey}"], "'ff'"),
    ("frey_shape", ["data=frey_face", "likelihood=gaussian", "data.root={frey}"], "frey_rawface"),
    ("ckpt_missing", ["ckpt_path={tmp}/nope.ckpt"], "ckpt_path"),
    ("ckpt_corrupt", ["ckpt_path={tmp}/corrupt.ckpt"], "ckpt_path"),
    ("grey_bernoulli", ["data.binarize=none"], "data.binarize"),
]


@pytest.mark.parametrize(
    ("case", "overrides", "needle"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_fails_in_one_line_and_touches_nothing(
    outputs, data_root, tmp_path, monkeypatch, capsys, case, overrides, needle
) -> None:
    """Through the console script's `main()` in-process (the subprocess path is tested below)."""
    (tmp_path / "corrupt.ckpt").write_bytes(b"this is not a checkpoint" * 10)
    (tmp_path / "empty").mkdir()
    fill = {"tmp": tmp_path}
    if case in ("truncated", "magic", "shape"):
        fill["broken"] = _broken_root(tmp_path, data_root, case)
    if case.startswith("frey"):
        fill["frey"] = _frey_root(tmp_path, case)
    before = _tree_digest(outputs / "outputs" / "old")
    args = [*tiny_overrides(data_root), *(o.format(**fill) for o in overrides)]
    monkeypatch.chdir(outputs)
    monkeypatch.setattr(sys, "argv", ["aevb-train", *args, f"hydra.run.dir=outputs/new_{case}"])
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 2
    stderr = capsys.readouterr().err
    errors = [ln for ln in stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and needle in errors[0], stderr[-2000:]
    assert errors[0].startswith("aevb-train: error: ") and "Traceback" not in stderr
    assert _tree_digest(outputs / "outputs" / "old") == before
    if case in ("latent_zero", "likelihood", "data", "unknown_key", "ckpt_missing"):
        assert not (outputs / "outputs" / f"new_{case}").exists()  # refused before Hydra ran


@pytest.mark.parametrize("env", [{}, {"HYDRA_FULL_ERROR": "1"}], ids=["short", "full_error"])
def test_console_script_exit_code_and_traceback_on_request(data_root, tmp_path, env) -> None:
    (tmp_path / "empty").mkdir()
    bad = [f"data.root={tmp_path}/empty", f"hydra.run.dir={tmp_path}/r"]
    proc = run_cli([*tiny_overrides(data_root), *bad], tmp_path, env=env)
    assert proc.returncode == 2 if not env else proc.returncode != 0
    assert ("Traceback" in proc.stderr) == bool(env)
    assert "MNIST not found" in proc.stderr
    typo = run_cli([*tiny_overrides(data_root), "model.latnt_dim=3"], tmp_path)
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert typo.stderr.strip().splitlines()[-1].startswith("aevb-train: error: model.latnt_dim")


def test_download_from_a_silent_server_times_out(tmp_path, monkeypatch) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections, never answers
    port = server.getsockname()[1]
    monkeypatch.setattr(data.torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.5)
    start = time.monotonic()
    try:
        with pytest.raises(DataError, match="download failed"):
            data.load_mnist(str(tmp_path), True)
    finally:
        server.close()
    assert time.monotonic() - start < 20


def test_idx_checks_name_the_file_and_the_problem(tmp_path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((5, 28, 28), np.uint8))
    assert data.check_idx(path, 3, (28, 28)) == 5
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="longer than its header"):
        data.check_idx(path, 3, (28, 28))
    path.write_bytes(b"\0\0")
    with pytest.raises(DataError, match="x-idx3-ubyte is not a 3-D IDX"):
        data.check_idx(path, 3, (28, 28))


def _fault(name: str, step: int) -> list[str]:
    return [f"+callbacks.fault._target_=tests.faults.{name}", f"+callbacks.fault.at_step={step}"]


def test_divergence_stops_with_status_diverged_and_keeps_the_last_good_checkpoint(
    data_root, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(
        [*tiny_overrides(data_root), "trainer.max_epochs=3", *_fault("PoisonWeights", 13)]
        + [f"hydra.run.dir={run_dir}"],
        tmp_path,
        env={"PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "diverged at step 13 (epoch 1): recon is not finite" in proc.stderr
    assert "Traceback" not in proc.stderr
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["diverged_step"] == 13 and m["diverged_term"] == "recon"
    last = torch.load(run_dir / m["last_checkpoint"], map_location="cpu", weights_only=False)
    assert last["global_step"] == 10  # end of epoch 0, before the bad update
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    model = VAE.load_from_checkpoint(run_dir / m["last_checkpoint"], map_location="cpu")
    assert torch.isfinite(model.elbo(torch.zeros(2, 1, 28, 28))).all()


def test_resume_after_sigkill_matches_the_uninterrupted_run(data_root, tmp_path) -> None:
    common = [*tiny_overrides(data_root), "trainer.max_epochs=3", "eval.iw_samples=0"]
    common += ["eval.iwae_ks=[]", "~callbacks.latent_scatter", "~callbacks.latent_manifold"]
    env = {"PYTHONPATH": str(REPO)}
    probe = "+callbacks.probe._target_=tests.faults.RequireFlushedSubnormals"  # speed setting
    full = run_cli([*common, probe, f"hydra.run.dir={tmp_path}/full"], tmp_path, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run_cli(
        [*common, *_fault("KillAt", 15), f"hydra.run.dir={tmp_path}/killed"], tmp_path, env=env
    )
    assert killed.returncode == -9  # SIGKILL in epoch 1, after the epoch-0 checkpoint
    assert not (tmp_path / "killed" / "metrics.json").exists()
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    resumed = run_cli(
        [*common, f"ckpt_path={last}", f"hydra.run.dir={tmp_path}/killed"], tmp_path, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for key in ("best_val/elbo", "test/elbo", "test/kl", "samples_seen", "global_step"):
        assert b[key] == a[key], key
    pa = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    pb = torch.load(last, weights_only=False)["state_dict"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_atomic_write_leaves_the_previous_file_intact_when_a_write_crashes(
    tmp_path, monkeypatch
) -> None:
    target = tmp_path / "metrics.json"
    atomic.write_json_atomic(target, {"status": "completed", "test/elbo": -100.0})
    before = target.read_bytes()

    def crash(fd: int) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="simulated"):
        atomic.write_json_atomic(target, {"status": "half", "x": list(range(10_000))})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_a_thread_killed_mid_write_never_exposes_a_partial_file(tmp_path) -> None:
    target = tmp_path / "eval.json"
    atomic.write_json_atomic(target, {"v": 0})
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            atomic.write_json_atomic(target, {"v": i, "pad": "x" * 100_000})

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(200):
            json.loads(target.read_text())  # always a complete document
    finally:
        stop.set()
        t.join()


def test_atomic_write_has_the_permissions_of_a_plain_write(tmp_path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    written = atomic.write_json_atomic(tmp_path / "metrics.json", {"v": 1})
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
