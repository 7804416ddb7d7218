"""DDP on the CPU (trainer=ddp_cpu: 2 processes, gloo): sharding, all-rank metrics, rank-0 files."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aevb import load_run
from aevb.data import EpochShuffle
from aevb.evaluate import evaluate

from .conftest import REPO, run_cli, tiny_overrides

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


def test_metrics_record_device_precision_ranks_and_torch(ddp_run) -> None:
    metrics = json.loads((ddp_run[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu"
    assert metrics["precision"] == "32-true" and metrics["torch"] == torch.__version__


def test_ranks_draw_different_training_noise_and_each_state_is_saved(ddp_run) -> None:
    states = torch.load(ddp_run[0] / "checkpoints" / "last.ckpt", weights_only=False)["rng_states"]
    ranks = states["ranks"]
    assert len(ranks) == 2
    # same draws consumed on both ranks: equal states would mean equal noise
    assert not torch.equal(ranks[0]["cpu"], ranks[1]["cpu"])
    assert torch.equal(states["cpu"], ranks[0]["cpu"])  # rank 0's where older readers look


def test_sharded_test_nll_equals_a_single_process_evaluation(ddp_run) -> None:
    """Importance samples keyed by test image: 2 ranks and 1 process draw the same ones."""
    run_dir, _ = ddp_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    single = evaluate(run_dir, ["eval.iw_samples=100", "eval.iwae_ks=[1,5,50]", "accelerator=cpu"])
    assert single["world_size"] == 1 and single["device"] == "cpu"
    for key in ("test/nll", "test/iwae_k1", "test/iwae_k50"):
        assert single[key] == pytest.approx(metrics[key], abs=2e-3), key  # MC noise ~0.1 nat


def test_budget_samples_counts_every_rank(data_root, tmp_path) -> None:
    """budget_samples counts over both ranks (as samples_seen): 700 = 1 epoch + 2 steps of 100."""
    run_dir = tmp_path / "run"
    args = [
        *_ddp_overrides(data_root),
        "budget_samples=700",
        "eval.iw_samples=0",
        "eval.iwae_ks=[]",
    ]
    proc = run_cli([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["samples_seen"] == 700  # not 2 x the budget
    assert metrics["global_step"] == 7


@pytest.fixture(scope="module")
def resume_runs(data_root, tmp_path_factory) -> tuple[Path, Path]:
    """2 epochs: uninterrupted, and SIGKILLed at step 7 (both ranks, in epoch 1) then resumed
    from the epoch-0 last.ckpt."""
    cwd = tmp_path_factory.mktemp("resume")
    common = [*_ddp_overrides(data_root), "trainer.max_epochs=2"]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    fresh = run_cli([*common, f"hydra.run.dir={cwd / 'fresh'}"], cwd)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    kill = ["+callbacks.fault._target_=tests.faults.KillAt", "+callbacks.fault.at_step=7"]
    killed = run_cli([*common, *kill, f"hydra.run.dir={cwd / 'killed'}"], cwd, env=env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    last = cwd / "killed" / "checkpoints" / "last.ckpt"
    resumed = run_cli([*common, f"ckpt_path={last}", f"hydra.run.dir={cwd / 'killed'}"], cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return cwd / "fresh", cwd / "killed"


def test_a_resumed_ddp_run_continues_bit_exactly(resume_runs) -> None:
    fresh, resumed = resume_runs
    a = torch.load(fresh / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 10
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for ra, rb in zip(a["rng_states"]["ranks"], b["rng_states"]["ranks"], strict=True):
        assert torch.equal(ra["cpu"], rb["cpu"])  # each rank restored its own stream
    ma = json.loads((fresh / "metrics.json").read_text())
    mb = json.loads((resumed / "metrics.json").read_text())
    for key in ("best_val/elbo", "test/elbo", "test/nll", "samples_seen"):
        assert ma[key] == mb[key], key
