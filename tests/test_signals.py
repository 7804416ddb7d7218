"""SIGINT/SIGTERM at random points: exit 130/143 within seconds, `interrupted` on record, a
resumable last.ckpt; aevb-eval stops between batches and shows progress (aevb.signals)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aevb import checkpoints, evaluate, evaluation, progress, signals

from .conftest import REPO, run_cli
from .test_rundir import fast


def _popen(args: list[str], cwd: Path, module: str = "aevb.train") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{REPO / 'src'}"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def _wait_caught(proc: subprocess.Popen, signum: int, timeout: float = 120) -> None:
    """Wait until `proc` has a handler for `signum` (Linux: the SigCgt mask in /proc)."""
    end = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = int(
            next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16
        )
        if caught >> (signum - 1) & 1:
            return
        assert time.monotonic() < end, "no handler installed"
        time.sleep(0.05)


def test_raising_turns_a_signal_into_interrupted_with_its_exit_code() -> None:
    with pytest.raises(signals.Interrupted) as err, signals.raising():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert err.value.exit_code == 143 and str(err.value) == "interrupted by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# (signal, where): "setup" = as soon as the run dir exists (Hydra, data, model), "training" =
# after the first last.ckpt, at a random moment of the next epochs
CASES = [(signal.SIGTERM, "training"), (signal.SIGINT, "training"), (signal.SIGTERM, "setup")]


@pytest.mark.parametrize(("signum", "where"), CASES, ids=[f"{s.name}-{w}" for s, w in CASES])
def test_a_signal_at_a_random_point_stops_in_seconds_and_resumes(
    data_root, tmp_path, signum, where
) -> None:
    seed = random.randrange(10**6)
    delay = random.Random(seed).uniform(0, 1.5)
    run = tmp_path / "run"
    proc = _popen([*fast(data_root), "trainer.max_epochs=1000", f"hydra.run.dir={run}"], tmp_path)
    _wait_for(run / "checkpoints" / "last.ckpt" if where == "training" else run, proc)
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    context = f"seed {seed}, delay {delay:.2f} s: {stderr[-2000:]}"
    assert proc.returncode == 128 + signum, context
    assert took < 20, context
    assert "Traceback" not in stderr, context
    assert f"interrupted by {signum.name}" in stderr, context
    metrics_file = run / "metrics.json"
    if metrics_file.exists():  # always once train() started; not if Hydra was still setting up
        metrics = json.loads(metrics_file.read_text())
        assert metrics["status"] == "interrupted" and metrics["signal"] == signum.name, context
    if where == "setup":
        return
    last = checkpoints.load(run / "checkpoints" / "last.ckpt")
    assert metrics["last_checkpoint_step"] == last["global_step"] > 0, context
    resumed = run_cli(
        [*fast(data_root), "resume=auto", f"trainer.max_epochs={last['epoch'] + 2}"]
        + [f"hydra.run.dir={run}"],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    done = json.loads(metrics_file.read_text())
    assert done["status"] == "completed" and done["global_step"] > last["global_step"]


def test_a_sweep_stopped_by_sigterm_exits_143_and_its_summary_says_interrupted(
    data_root, tmp_path
) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *fast(data_root), "trainer.max_epochs=3", "model.latent_dim=2,3"]
        + ["+callbacks.fault._target_=tests.faults.SignalAt", "+callbacks.fault.at_step=15"]
        + [f"hydra.sweep.dir={sweep}"],
        tmp_path,
        env={"PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 143, proc.stderr[-2000:]
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["last_checkpoint_step"] == 16
    assert not (sweep / "1").exists()  # the sweep stopped
    summary = (sweep / "summary.md").read_text()
    assert "1 interrupted (INTERRUPTED sweep)" in summary


def test_a_joblib_sweep_stopped_by_sigterm_stops_every_job_resumably(data_root, tmp_path) -> None:
    """SIGTERM to the launching process of a 2-worker joblib sweep of 3 jobs: it is forwarded to
    the workers; the two running jobs stop at a batch end with a last.ckpt, the third never
    starts, all three are `interrupted`, the summary says so and the launcher exits 143."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *fast(data_root)]
        + ["trainer.max_epochs=50", "model.latent_dim=2,3,4"]
        + ["+callbacks.fault._target_=tests.faults.SignalAt", "+callbacks.fault.at_step=15"]
        + ["+callbacks.fault.launcher_from_job=0", "+callbacks.fault.wait_for_jobs=2"]
        + [f"hydra.sweep.dir={sweep}"],
        tmp_path,
        env={"PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "stopping the sweep's 2 running jobs" in proc.stderr
    records = {job: json.loads((sweep / job / "metrics.json").read_text()) for job in "012"}
    assert {r["status"] for r in records.values()} == {"interrupted"}
    started = [r for r in records.values() if r["last_checkpoint_step"] is not None]
    assert len(started) == 2 and all(r["last_checkpoint_step"] >= 15 for r in started)
    assert "3 interrupted (INTERRUPTED sweep)" in (sweep / "summary.md").read_text()


def _pool_worker(ready_first: bool, go, result) -> None:
    """A process-pool worker: ready (handles signals) at once, or only after `go` is set."""
    if ready_first:
        signals.worker_stopped()
        result.put("ready")
    go.wait(60)
    result.put(signals.worker_stopped())


@pytest.mark.parametrize("ready_first", [True, False], ids=["running", "starting_up"])
def test_a_sweep_stop_reaches_workers_running_or_still_starting(ready_first) -> None:
    """The launcher signals a worker only once it handles signals (the default action would
    kill it and the pool would abort every job); one still starting up sees the stop when it
    reaches its job. Either way the worker survives and knows the signal."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, as loky starts workers
    go, result = ctx.Event(), ctx.Queue()
    with signals.stopping_sweep() as stop:
        worker = ctx.Process(target=_pool_worker, args=(ready_first, go, result))
        worker.start()
        if ready_first:
            assert result.get(timeout=60) == "ready"
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's handler runs here
        time.sleep(0.5)
        go.set()
        got = result.get(timeout=60)
        worker.join(60)
    assert stop.signum == signal.SIGTERM and stop.exit_code == 143
    assert got == signal.SIGTERM and worker.exitcode == 0
    assert signals.STOP_DIR_ENV not in os.environ and not stop.stop_dir.exists()


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("signals")
    run = cwd / "run"
    proc = run_cli([*fast(data_root), f"hydra.run.dir={run}"], cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


@pytest.mark.parametrize("earlier", [False, True], ids=["no_eval_json", "completed_eval_json"])
def test_aevb_eval_stops_within_a_batch(finished, tmp_path, earlier) -> None:
    """k = 10^5 importance samples: one test batch takes minutes on a CPU."""
    eval_json = finished / "eval.json"
    eval_json.unlink(missing_ok=True)
    if earlier:
        eval_json.write_text(json.dumps({"status": "completed", "test/nll": 90.0}))
    before = eval_json.read_text() if earlier else None
    proc = _popen(
        [str(finished), "eval.iw_samples=100000", "eval.iwae_ks=[1]"], tmp_path, "aevb.evaluate"
    )
    _wait_caught(proc, signal.SIGTERM)  # aevb-eval started (past the imports)
    time.sleep(3)  # loading the run, or inside the first batch
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and time.monotonic() - sent < 10, stderr[-2000:]
    assert "Traceback" not in stderr
    if earlier:
        assert eval_json.read_text() == before and "completed eval.json is kept" in stderr
    else:
        assert json.loads(eval_json.read_text())["status"] == "interrupted"


def test_aevb_eval_reports_progress_and_survives_a_read_only_run_dir(
    finished, tmp_path, monkeypatch, capsys
) -> None:
    from .fs import read_only

    monkeypatch.setattr(evaluation, "EvalProgress", lambda: progress.EvalProgress(every_s=0))
    monkeypatch.chdir(tmp_path)
    (finished / "eval.json").unlink(missing_ok=True)
    with read_only(finished), pytest.raises(SystemExit) as exit_:
        evaluate.main([str(finished), "eval.iw_samples=10", "eval.iwae_ks=[1]"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "aevb-eval: test batch 1/2 (50%)" in err and "test batch 2/2 (100%)" in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("aevb-eval: error")]
    assert "Read-only file system" in line and str(finished / "eval.json") in line
    saved = json.loads((tmp_path / f"{finished.name}.eval.json").read_text())
    assert saved["status"] == "completed" and "test/elbo" in saved  # the computation is kept


def test_aevb_eval_refuses_an_iw_samples_that_cannot_fit_in_memory(finished, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([str(finished), "eval.iw_samples=1000000000000", "eval.iwae_ks=[1]"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("aevb-eval: error: eval.iw_samples")
    assert "GiB" in err and len(err.splitlines()) == 1
