"""The Appendix D estimate of a model of any algorithm against quadrature, and the Fig. 3
callback's grid, JSON and resume state."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from aevb.marginal_curve import MarginalCurve, marginal_log_likelihood
from aevb.metrics import AppendixD
from aevb.rundir import RunDir
from aevb.vae import VAE

from .conftest import two_bars
from .test_mcem import exact_log_px, loader, make_model


def test_estimate_matches_quadrature_for_models_with_and_without_an_encoder() -> None:
    x = two_bars(40, seed=2)
    mcem = make_model(40)
    torch.manual_seed(0)
    vae = VAE(data_shape=(1, 4, 4), latent_dim=2, hidden_dims=[16], activation="tanh",
              init_std=0.3)  # fmt: skip
    for model in (mcem, vae):
        estimate = marginal_log_likelihood(model, x, chunk=16, seed=1)
        truth = exact_log_px(model, x)
        assert estimate.shape == (40,) and estimate.dtype == torch.float64
        assert abs(float((estimate - truth).mean())) < 0.1, type(model).__name__
    again = marginal_log_likelihood(vae, x, chunk=16, seed=1)
    assert torch.equal(again, marginal_log_likelihood(vae, x, chunk=16, seed=1))


def test_estimate_runs_under_inference_mode() -> None:
    model, x = make_model(8), two_bars(8)
    with torch.inference_mode():
        x = x.clone()
        log_px = AppendixD(num_samples=5, burn_in=5)(
            x, model.decode, model.prior, torch.Generator().manual_seed(0)
        )
    assert torch.isfinite(log_px).all()


class _Data(L.LightningDataModule):
    def __init__(self, x: torch.Tensor) -> None:
        super().__init__()
        self.train_images, self.test_images, self.binarize = x, two_bars(30, seed=3), "none"

    def train_dataloader(self):
        return loader(self.train_images)


def test_curve_points_on_a_linear_grid_with_json_and_resume_state(tmp_path) -> None:
    data = two_bars(100)
    curve = MarginalCurve(every_samples=200, num_train=20, num_test=10, chunk=16,
                          num_samples=20, burn_in=20)  # fmt: skip
    model = make_model(100)
    trainer = L.Trainer(max_steps=5 * 9, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        accelerator="cpu", callbacks=[curve], limit_val_batches=0,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, datamodule=_Data(data))
    record = json.loads((tmp_path / RunDir.MARGINAL_CURVE).read_text())
    samples = [p["samples"] for p in record["points"]]
    assert samples == [0, 200, 400, 450]  # the untrained model, every 200, the end
    assert record["train_points"] == 20 and record["test_points"] == 10
    assert record["estimator"]["num_samples"] == 20
    first, last = record["points"][0], record["points"][-1]
    assert last["train_log_px"] > first["train_log_px"]  # training helps the estimate
    state = curve.state_dict()
    fresh = MarginalCurve(every_samples=200)
    fresh.load_state_dict(state)
    assert fresh.points == curve.points and fresh.next_after(450) == 600


def test_curve_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="every_samples must be >= 1"):
        MarginalCurve(every_samples=0)
    with pytest.raises(ValueError, match="num_test must be an integer > 0"):
        MarginalCurve(num_test=0)
