#!/usr/bin/env python
"""Sweeps on a live SLURM cluster (started by scripts/slurm_e2e.sh), on tiny synthetic data.

    python scripts/slurm_e2e.py <work dir> [array requeue timeout ddp]   # default: all four
    # SLURM_CONF must point at a running cluster (scripts/slurm_local.sh start)

Four scenarios, each `aevb-train -m hydra/launcher=slurm ...` (`python -m aevb.train` when the
console script is not installed):

1. array: a job array of 4 points (model.latent_dim=2,3 x seed=1,2): all complete, the
   summary lists them and aggregates the two seeds of each latent size;
2. requeue: a job requeued with `scontrol requeue` after its first last.ckpt resumes from it
   and ends with the metrics of an uninterrupted twin run at the same time;
3. timeout: a job with a 1-minute limit is signalled by SLURM, requeued by submitit and resumed
   (as often as needed) until it finishes; its epochs are sized from the twin's speed so that
   it needs more than one allocation (the slowest scenario: 2-4 allocations of ~1 minute);
4. ddp: trainer=ddp_cpu with 2 SLURM tasks (gloo): one run, one metrics.json, rank-0 outputs,
   test metrics of the whole test set (as tests/test_ddp.py checks them).

Prints one line per check; exits 1 at the first failed one (its sweep's logs are kept).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import make_mnist_like, tiny_overrides  # noqa: E402  (the tests' tiny data)

#: the SLURM launcher on a CPU-only node: no GPUs, 1 CPU and 1 GB per task
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]
#: every `aevb-train -m` started, stopped at exit if still waiting for its jobs
LAUNCHED: list[subprocess.Popen[bytes]] = []
#: epochs of the requeue scenario's runs: enough that `scontrol requeue` lands while the job
#: trains (with 6, on a busy CI machine it landed on the final epoch's last batch)
TWIN_EPOCHS = 20
COMPARED = ("test/elbo", "test/nll", "test/kl", "best_val/elbo", "samples_seen", "global_step")


class Failed(RuntimeError):
    pass


def check(ok: bool, what: str) -> None:
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        raise Failed(what)


def launch(work: Path, name: str, *overrides: str) -> tuple[Path, subprocess.Popen[bytes]]:
    """Start `aevb-train -m` of one sweep (in the background); its output goes to <name>.log."""
    sweep = work / name
    keys = {o.split("=", 1)[0] for o in overrides}
    tiny = [o for o in tiny_overrides(work / "data") if o.split("=", 1)[0] not in keys]
    train = ["aevb-train"] if shutil.which("aevb-train") else [sys.executable, "-m", "aevb.train"]
    cmd = [*train, "-m", *tiny, *SLURM]
    cmd += [*overrides, f"hydra.sweep.dir={sweep}"]
    log = (work / f"{name}.log").open("wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    LAUNCHED.append(proc)
    return sweep, proc


def finish(work: Path, name: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
    if rc != 0:
        print((work / f"{name}.log").read_text(errors="replace")[-4000:], file=sys.stderr)
    check(rc == 0, f"{name}: aevb-train -m exited {rc}")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            check(False, f"{what} within {timeout:.0f} s")
        time.sleep(0.5)


def slurm_ids(sweep: Path) -> list[str]:
    """The SLURM ids of a sweep's jobs: submitit's folders (hydra.launcher.submitit_folder)."""
    folder = sweep / ".submitit"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    tasks = sorted(n for n in names if re.fullmatch(r"\d+_\d+", n))  # <array id>_<task>
    return tasks or sorted(n for n in names if n.isdigit())  # one point: a plain job


def restarts(job_id: str) -> int:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
    m = re.search(r"Restarts=(\d+)", out.stdout)
    return int(m.group(1)) if m else -1


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def job_logs(sweep: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(sweep.rglob("*_log.*")))


def scenario_array(work: Path) -> None:
    sweep, proc = launch(work, "array", "model.latent_dim=2,3", "seed=1,2")
    finish(work, "array", proc, 600)
    ids = slurm_ids(sweep)
    arrays = {i.split("_")[0] for i in ids}
    check(len(ids) == 4 and len(arrays) == 1, f"array: 4 tasks of one job array ({ids})")
    rows = (sweep / "summary.csv").read_text().splitlines()[1:]
    check(len(rows) == 4 and all(",completed," in r for r in rows), "array: 4 completed rows")
    md = (sweep / "summary.md").read_text()
    check(md.index("## Over seeds") < md.index("## Per job"), "array: seed table first")
    with (sweep / "summary_seeds.csv").open() as f:
        seeds = [(r["model.latent_dim"], r["test/elbo/n"]) for r in csv.DictReader(f)]
    check(seeds == [("2", "2"), ("3", "2")], f"array: latent sizes over n = 2 seeds ({seeds})")


def scenario_requeue(work: Path) -> float:
    """Returns the uninterrupted twin's seconds per epoch."""
    twin = ["model.latent_dim=2", f"trainer.max_epochs={TWIN_EPOCHS}"]
    sweep, proc = launch(work, "requeued", *twin)
    twin_sweep, twin_proc = launch(work, "uninterrupted", *twin)
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    wait_for(last.is_file, 300, "requeue: the job's first last.ckpt")
    (job_id,) = slurm_ids(sweep)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    print(f"      requeued SLURM job {job_id} after {last.name} appeared", flush=True)
    finish(work, "requeued", proc, 600)
    finish(work, "uninterrupted", twin_proc, 600)
    check(restarts(job_id) == 1, f"requeue: SLURM restarted job {job_id} once")
    resumed = f"Restoring states from the checkpoint path at {last}" in job_logs(sweep)
    check(resumed, "requeue: the restarted job resumed from last.ckpt")
    a, b = metrics(sweep / "0"), metrics(twin_sweep / "0")
    diffs = {k: abs(a[k] - b[k]) for k in COMPARED}
    same = all(d <= 1e-6 * max(1.0, abs(b[k])) for k, d in diffs.items())
    epochs = a["epochs"] == b["epochs"] == TWIN_EPOCHS
    check(same and epochs, f"requeue: metrics of the twin ({diffs})")
    return b["fit_time_s"] / b["epochs"]


def scenario_timeout(work: Path, epoch_s: float) -> None:
    # SLURM signals USR2 signal_delay_s before the 1-minute limit, checking every ~30 s and
    # up to 30 s early: 25-55 s after the start for 5 s, after submitit has set its handler
    # (a signal while the job still loads its pickle kills it). Sized to ~150 s of training at
    # the speed of the requeue scenario's twin, which shared the cores with another job: alone,
    # this job may run twice as fast, and must still outlast its first allocation.
    epochs = max(8, math.ceil(150 / epoch_s))
    sweep, proc = launch(
        work,
        "timeout",
        "model.latent_dim=2",
        f"trainer.max_epochs={epochs}",
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=5",
        "hydra.launcher.max_num_timeout=6",
    )
    finish(work, "timeout", proc, 900)
    (job_id,) = slurm_ids(sweep)
    logs = job_logs(sweep)
    check("Requeued job" in logs, f"timeout: submitit requeued job {job_id}")
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    resumed = f"Restoring states from the checkpoint path at {last}" in logs
    check(resumed, "timeout: the requeued job resumed from last.ckpt")
    check(restarts(job_id) >= 1, f"timeout: SLURM restarted it {restarts(job_id)} time(s)")
    m = metrics(sweep / "0")
    check(m["status"] == "completed" and m["epochs"] == epochs, f"timeout: all {epochs} epochs")


def scenario_ddp(work: Path) -> None:
    import torch

    from aevb import load_run

    sweep, proc = launch(
        work,
        "ddp",
        "trainer=ddp_cpu",
        "model.latent_dim=2",
        "hydra.launcher.tasks_per_node=2",
    )
    finish(work, "ddp", proc, 600)
    logs = job_logs(sweep)
    check("MEMBER: 1/2" in logs and "MEMBER: 2/2" in logs, "ddp: 2 ranks started by SLURM")
    found = [p.relative_to(sweep).as_posix() for p in sweep.rglob("metrics.json")]
    check(found == ["0/metrics.json"], f"ddp: one run, one metrics.json ({found})")
    run_dir = sweep / "0"
    m = metrics(run_dir)
    check(m["samples_seen"] == 500 and m["global_step"] == 5, "ddp: both ranks' shards counted")
    writers = {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}
    check(len(writers) == 1, f"ddp: one process wrote the event files ({writers})")
    run = load_run(run_dir)
    run.datamodule.setup()
    with torch.no_grad():
        kl = run.model.elbo_terms(run.datamodule.test_images).kl.mean().item()
    check(math.isclose(m["test/kl"], kl, rel_tol=1e-5, abs_tol=1e-5), "ddp: test/kl of all data")


SCENARIOS = {
    "array": scenario_array,
    "requeue": scenario_requeue,
    "timeout": scenario_timeout,
    "ddp": scenario_ddp,
}


def main() -> int:
    work = Path(sys.argv[1]).resolve()
    unknown = set(sys.argv[2:]) - set(SCENARIOS)
    if unknown:
        print(f"slurm_e2e.py: error: unknown {sorted(unknown)}; allowed: {list(SCENARIOS)}")
        return 2
    if not os.environ.get("SLURM_CONF"):
        print("slurm_e2e.py: error: SLURM_CONF is not set (start scripts/slurm_local.sh)")
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`: stop the sweeps too
    make_mnist_like(work / "data", "MNIST")
    start = time.monotonic()
    chosen = sys.argv[2:] or list(SCENARIOS)
    epoch_s = 1.0  # seconds per epoch, measured by the requeue scenario when it runs
    try:
        for name in chosen:
            if name == "requeue":
                epoch_s = scenario_requeue(work)
            elif name == "timeout":
                scenario_timeout(work, epoch_s)
            else:
                SCENARIOS[name](work)
    except Failed:
        print(f"slurm_e2e.py: FAILED after {time.monotonic() - start:.0f} s; logs in {work}")
        return 1
    finally:
        for proc in LAUNCHED:
            if proc.poll() is None:
                proc.kill()
    print(f"slurm_e2e.py: all scenarios passed in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
