"""DDP on the CPU (trainer=ddp_cpu: 2 processes, gloo): sharding, all-rank metrics, rank-0 files."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aevb import load_run
from aevb.data import EpochShuffle

from .conftest import run_cli, tiny_overrides

N_TRAIN = 500  # tiny data: 600 training images minus data.val_size=100


def _ddp_overrides(data_root: Path) -> list[str]:
    return [o for o in tiny_overrides(data_root) if o != "trainer=cpu"] + ["trainer=ddp_cpu"]


@pytest.mark.parametrize("n", [10, 11])
def test_training_shards_are_disjoint_equal_and_eval_shards_cover_every_row(n: int) -> None:
    train = [EpochShuffle(n, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for s in train:
        s.set_epoch(4)
    a, b = (s.indices().tolist() for s in train)
    assert len(a) == len(b) == n // 2 and not set(a) & set(b)
    assert train[0].indices().tolist() == a  # same epoch, same order
    train[0].set_epoch(5)
    assert train[0].indices().tolist() != a  # a new permutation every epoch
    evals = [EpochShuffle(n, shuffle=False, seed=3, rank=r, world_size=2) for r in (0, 1)]
    rows = sorted(i for s in evals for i in s.indices().tolist())
    assert rows == list(range(n))  # every test image counted exactly once over the ranks


@pytest.fixture(scope="module")
def ddp_run(data_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    cwd = tmp_path_factory.mktemp("ddp")
    run_dir = cwd / "run"
    proc = run_cli([*_ddp_overrides(data_root), f"hydra.run.dir={run_dir}"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_two_gloo_processes_and_only_rank_zero_writes(ddp_run) -> None:
    run_dir, proc = ddp_run
    out = proc.stdout + proc.stderr
    assert "MEMBER: 2/2" in out and "distributed_backend=gloo" in out
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran as its own process
    assert [p.relative_to(run_dir.parent) for p in run_dir.parent.rglob("metrics.json")] == [
        Path("run/metrics.json")
    ]
    writers = {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}
    assert len(writers) == 1, writers  # one process id wrote every event file (scalars, images)
    assert proc.stdout.count("final test metrics") == 1


def test_samples_seen_counts_both_ranks_each_on_its_own_shard(ddp_run) -> None:
    run_dir, _ = ddp_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["samples_seen"] == N_TRAIN  # 250 per rank, both counted
    assert metrics["global_step"] == N_TRAIN // 2 // 50  # each rank steps through half the data


def test_logged_test_metrics_equal_a_single_process_evaluation(ddp_run) -> None:
    run_dir, _ = ddp_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = load_run(run_dir)  # the best checkpoint, the same test images (same binarization seed)
    run.datamodule.setup()
    x = run.datamodule.test_images
    torch.manual_seed(0)
    with torch.no_grad():
        kl = run.model.elbo_terms(x).kl  # analytic KL: deterministic given the weights
        draws = torch.stack([run.model.elbo(x) for _ in range(20)])  # [20, N], one z each
    # KL is exact, so it tells an all-rank mean from rank 0's shard (every other test image)
    assert metrics["test/kl"] == pytest.approx(kl.mean().item(), rel=1e-5, abs=1e-5)
    shard0 = kl[0::2].mean().item()
    assert abs(shard0 - kl.mean().item()) > 20 * max(1e-5, 1e-5 * abs(shard0))
    # the ELBO of one z per image: equal up to Monte Carlo noise of a mean over N images
    stderr = math.sqrt(draws.var(0).mean().item() / x.shape[0])
    assert abs(metrics["test/elbo"] - draws.mean().item()) < 5 * stderr + 1e-3
    logged = {}
    for events in run_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "test/elbo" in acc.Tags()["scalars"]:
            logged = {e.step: e.value for e in acc.Scalars("test/elbo")}
    assert list(logged.values()) == [pytest.approx(metrics["test/elbo"], abs=1e-4)]


def test_ddp_started_by_lightning_is_refused_inside_a_local_multirun(data_root, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(
        ["-m", *_ddp_overrides(data_root), "model.latent_dim=2", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )
    assert proc.returncode != 0
    assert not list(sweep.rglob("train_ddp_process_1.log"))  # no rank re-ran the sweep
    with (sweep / "summary.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "failed" and "hydra/launcher=slurm" in row["error"], row
