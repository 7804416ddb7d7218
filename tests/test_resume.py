"""Resuming a step-limited run (`budget_samples`, the paper reproduction's setting) is bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from aevb.data import EpochShuffle, TensorLoader
from tests.conftest import REPO, run_cli, tiny_overrides


def test_loader_placed_by_position_serves_the_rest_of_that_epoch() -> None:
    images = torch.rand(23, 1, 2, 2)
    labels = torch.arange(23)

    def loader(position: int | None) -> TensorLoader:
        sampler = EpochShuffle(23, shuffle=True, seed=3)
        return TensorLoader(
            images,
            labels,
            5,
            sampler,
            binarize=True,
            position=None if position is None else (lambda: position),
        )

    plain = loader(None)
    plain.sampler.set_epoch(2)
    epoch2 = list(plain)  # 5 batches: 4 full, 1 of 3
    placed = list(loader(2 * 5 + 3))  # epoch 2, 3 batches already trained
    assert len(placed) == 2
    for (xa, ya), (xb, yb) in zip(epoch2[3:], placed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)  # same rows, same binarization


def test_budget_run_resumed_from_an_epoch_end_checkpoint_matches_the_uninterrupted_run(
    data_root: Path, tmp_path: Path
) -> None:
    common = [*tiny_overrides(data_root), "budget_samples=1500", "eval.iw_samples=0"]
    common += ["eval.iwae_ks=[]", "~callbacks.latent_scatter", "~callbacks.latent_manifold"]
    env = {"PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    full = run_cli([*common, f"hydra.run.dir={tmp_path}/full"], tmp_path, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    kill = ["+callbacks.fault._target_=tests.faults.KillAt", "+callbacks.fault.at_step=15"]
    killed = run_cli([*common, *kill, f"hydra.run.dir={tmp_path}/killed"], tmp_path, env=env)
    assert killed.returncode == -9  # in epoch 1 (10 steps per epoch), after epoch 0's last.ckpt
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    resumed = run_cli(
        [*common, f"ckpt_path={last}", f"hydra.run.dir={tmp_path}/killed"], tmp_path, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for key in ("best_val/elbo", "test/elbo", "samples_seen", "global_step"):
        assert b[key] == a[key], key
    pa = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    pb = torch.load(last, weights_only=False)["state_dict"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_run_stopped_by_sigterm_mid_epoch_resumes_to_the_uninterrupted_result(
    data_root: Path, tmp_path: Path
) -> None:
    """SIGTERM in epoch 1 (10 steps per epoch): last.ckpt is written at that batch's end, and
    the resumed run trains the rest of epoch 1, not one epoch less (a `scontrol requeue`)."""
    common = [*tiny_overrides(data_root), "trainer.max_epochs=3", "eval.iw_samples=0"]
    common += ["eval.iwae_ks=[]", "~callbacks.latent_scatter", "~callbacks.latent_manifold"]
    env = {"PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    full = run_cli([*common, f"hydra.run.dir={tmp_path}/full"], tmp_path, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    term = ["+callbacks.fault._target_=tests.faults.SignalAt", "+callbacks.fault.at_step=15"]
    stopped = run_cli([*common, *term, f"hydra.run.dir={tmp_path}/stopped"], tmp_path, env=env)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 16  # the batch end of step 15
    resumed = run_cli(
        [*common, f"ckpt_path={last}", f"hydra.run.dir={tmp_path}/stopped"], tmp_path, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    for key in ("best_val/elbo", "test/elbo", "samples_seen", "global_step"):
        assert b[key] == a[key], key
    pa = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    pb = torch.load(last, weights_only=False)["state_dict"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
