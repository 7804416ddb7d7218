"""Resuming a step-limited run (`budget_samples`, the paper reproduction's setting) is bit-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aevb.data import EpochShuffle, TensorLoader
from tests.conftest import interrupt_resume_compare, tiny_overrides


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


#: a few seconds of training on the tiny data: 10 steps per epoch, no image callbacks
QUIET = ["eval.iw_samples=0", "eval.iwae_ks=[]", "~callbacks.latent_scatter"]
QUIET += ["~callbacks.latent_manifold"]


def test_budget_run_resumed_from_an_epoch_end_checkpoint_matches_the_uninterrupted_run(
    data_root: Path, tmp_path: Path
) -> None:
    """SIGKILL in epoch 1, resumed from epoch 0's last.ckpt (Lightning 2.6 used to advance its
    epoch counter twice there, so the resumed run saw another epoch's data order)."""
    common = [*tiny_overrides(data_root), "budget_samples=1500", *QUIET]
    kill = ["+callbacks.fault._target_=tests.faults.KillAt", "+callbacks.fault.at_step=15"]
    interrupt_resume_compare(tmp_path, common, kill, returncode=-9, last_step=10)


def test_run_stopped_by_sigterm_mid_epoch_resumes_to_the_uninterrupted_result(
    data_root: Path, tmp_path: Path
) -> None:
    """SIGTERM in epoch 1: last.ckpt is written at that batch's end, and the resumed run trains
    the rest of epoch 1, not one epoch less (a `scontrol requeue`)."""
    common = [*tiny_overrides(data_root), "trainer.max_epochs=3", *QUIET]
    term = ["+callbacks.fault._target_=tests.faults.SignalAt", "+callbacks.fault.at_step=15"]
    interrupt_resume_compare(tmp_path, common, term, returncode=143, last_step=16)


NO_IMPROVEMENT = "+callbacks.best._target_=tests.faults.NoImprovement"


@pytest.mark.parametrize(
    ("epoch", "best_is_final"),
    [(1, True), (2, True), (2, False)],
    ids=["middle-epoch", "final-epoch", "final-epoch-not-best"],
)
def test_run_stopped_by_sigterm_on_an_epochs_last_batch_resumes_to_the_same_result(
    data_root: Path, tmp_path: Path, epoch: int, best_is_final: bool
) -> None:
    """SIGTERM on an epoch's last batch (10 batches an epoch): last.ckpt is written at that
    batch's end, then the epoch's validation still runs and rewrites best.ckpt and last.ckpt as
    in the uninterrupted run. On the final epoch (the CI's `scontrol requeue` that landed there)
    the resumed run has nothing left to train and only tests: best.ckpt, best_val/elbo, the
    test metrics (on forked streams, vae.TEST_SEED) and, where the final weights are not the
    best, their own test_final/* metrics must still be the uninterrupted run's."""
    common = [*tiny_overrides(data_root), "trainer.max_epochs=3", *QUIET]
    keys = ("best_val/elbo", "test/elbo", "samples_seen", "global_step", "final_is_best")
    if not best_is_final:  # best.ckpt stays epoch 0's
        common.append(NO_IMPROVEMENT)
        keys += ("test_final/elbo",)
    at_step = 10 * epoch + 9
    term = [
        "+callbacks.fault._target_=tests.faults.SignalAt",
        f"+callbacks.fault.at_step={at_step}",
    ]
    interrupt_resume_compare(
        tmp_path, common, term, returncode=143, last_step=at_step + 1, keys=keys
    )
