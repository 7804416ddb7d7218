"""The benchmark scripts run end to end at tiny size (correctness only, no timing asserts)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def run_benchmark(script: str, data_root, options: str, timeout: int = 300) -> str:
    """The stdout of `benchmarks/<script> --data-root <data_root> <options>`; fails the test
    with the script's stderr if it exits non-zero."""
    argv = [sys.executable, str(REPO / "benchmarks" / script), "--data-root", str(data_root)]
    proc = subprocess.run(
        [*argv, *options.split()], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_throughput_smoke(data_root) -> None:
    options = "--epochs 2 --hidden 16 --latent 2 --val-size 100 trainer=cpu"
    out = run_benchmark("train_throughput.py", data_root, options)
    for row in ("(a) matmul bound", "(b) plain loop", "(c) DataLoader", "(d) aevb-train"):
        assert row in out, out
    assert "peak RSS" in out and "x bound" in out


def test_eval_throughput_smoke(data_root) -> None:
    options = "--n-test 20 --k 50 --batch 8 --hidden 16 --log-prob"
    out = run_benchmark("eval_throughput.py", data_root, options)
    for row in ("(a) decoder GEMM bound", "(b) aevb-eval test step", "(c) same, Bernoulli"):
        assert row in out, out
    assert "goal 3: aevb-eval k=50 = " in out and "peak RSS" in out
    nll, log_prob_nll, iwae1 = (
        float(out.split(key)[1].split()[0])
        for key in ("NLL = ", "NLL with Bernoulli.log_prob = ", "IWAE_1 = ")
    )
    assert nll <= -iwae1  # log mean exp >= mean log of the same weights
    assert abs(nll - log_prob_nll) < 1e-3  # the fast log-density is the same density


def test_sweep_throughput_smoke(data_root) -> None:
    options = (
        "--epochs 1 data.val_size=100 model.hidden_dims=[32] model.latent_dim=4 trainer=cpu "
        "eval.iw_samples=10 eval.iwae_ks=[1,5]"
    )
    out = run_benchmark("sweep_throughput.py", data_root, options, timeout=600)
    assert "(a) one job alone" in out and "(b) 2-job joblib sweep" in out, out
    assert "goal 4: 2-job joblib sweep = " in out, out


def test_cli_latency_smoke() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "cli_latency.py"),
            "--repeats",
            "1",
            "--only",
            "train --help",
            "train model.latent_dim=0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "load average before: " in out and "wall s" in out and "cpu s" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("train ")]
    assert len(rows) == 2 and all(row[-1] == "no" for row in rows), out  # torch not loaded


def test_step_cost_smoke(data_root) -> None:
    options = (
        "--recipe default --steps 24 --chunk 6 --warmup 6 --steps-per-call 1,3 data.val_size=100 "
        "data.batch_size=50 model.hidden_dims=[16] model.latent_dim=2 trainer=cpu "
        "eval.iw_samples=10 eval.iwae_ks=[1,5]"
    )
    out = run_benchmark("step_cost.py", data_root, options)
    for k in (1, 3):
        assert f"goal 1 (steps_per_call={k}): aevb-train = " in out, out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["3"])]
    assert [int(r[1]) for r in rows] == [24, 24], out  # each timed its 24 steps after warm-up
    assert all(float(r[2]) > 0 for r in rows), out  # warm-up wall time, 3 significant digits
