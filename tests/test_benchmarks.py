"""The benchmark scripts run end to end at tiny size (correctness only, no timing asserts)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_train_throughput_smoke(data_root) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train_throughput.py"),
            "--data-root",
            str(data_root),
            "--epochs",
            "2",
            "--hidden",
            "16",
            "--latent",
            "2",
            "--val-size",
            "100",
            "trainer=cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for row in ("(a) matmul bound", "(b) plain loop", "(c) DataLoader", "(d) aevb-train"):
        assert row in out, out
    assert "peak RSS" in out and "x bound" in out


def test_eval_throughput_smoke(data_root) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "eval_throughput.py"),
            "--data-root",
            str(data_root),
            "--n-test",
            "20",
            "--k",
            "50",
            "--hidden",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "(a) GEMM bound" in out and "(b) VAE.log_likelihood" in out and "peak RSS" in out
    nll, neg_elbo = (float(out.split(key)[1].split()[0]) for key in ("NLL = ", "-ELBO = "))
    assert nll <= neg_elbo + 0.5  # the importance-weighted bound is the tighter one
