"""The VAE's public API: distributions in and out, sampling, checkpoints."""

from __future__ import annotations

import lightning as L
import torch
from torch.distributions import Distribution

from aevb.data import ImageDataModule
from aevb.epoch_metrics import EvaluationSettings
from aevb.vae import VAE


def test_public_api_shapes() -> None:
    model = VAE(data_shape=(1, 28, 28), latent_dim=5, hidden_dims=[32, 16])
    x = torch.bernoulli(torch.rand(3, 1, 28, 28))
    q = model.encode(x)
    assert isinstance(q, Distribution)
    assert q.batch_shape == (3,) and q.event_shape == (5,)
    px = model.decode(q.rsample())
    assert px.batch_shape == (3,) and px.event_shape == (1, 28, 28)
    assert px.log_prob(x).shape == (3,)
    assert model.prior.event_shape == (5,)
    assert model.elbo(x).shape == (3,)
    imgs = model.sample(6)
    assert imgs.shape == (6, 1, 28, 28) and imgs.min() >= 0 and imgs.max() <= 1
    assert model.reconstruct(x).shape == x.shape


def test_sampling_is_seeded() -> None:
    model = VAE(data_shape=(1, 8, 8), latent_dim=2, hidden_dims=[8])
    a = model.sample(4, generator=torch.Generator().manual_seed(3))
    b = model.sample(4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_training_improves_elbo_and_checkpoint_round_trips(data_root, tmp_path) -> None:
    L.seed_everything(0)
    dm = ImageDataModule(root=str(data_root), download=False, val_size=100, batch_size=50)
    dm.setup()
    model = VAE(data_shape=dm.data_shape, latent_dim=4, hidden_dims=[64])
    x = dm.val_images
    before = model.elbo(x).mean().item()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    after = model.elbo(x).mean().item()
    assert after > before + 50, (before, after)
    assert int(model.samples_seen) == 3 * 500
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = VAE.load_from_checkpoint(path)
    for (name, p), (_, q) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(p, q, msg=name)
    assert int(loaded.samples_seen) == 1500
    assert "evaluation" not in loaded.hparams and loaded.evaluation == EvaluationSettings()
    spec = EvaluationSettings(iw_samples=7)  # not a hyperparameter: given when loading
    assert VAE.load_from_checkpoint(path, evaluation=spec).evaluation is spec


def test_test_epochs_compute_the_evaluation_argument_under_the_test_prefix(data_root) -> None:
    spec = EvaluationSettings(iw_samples=4, iwae_ks=(2,))
    model = VAE(data_shape=(1, 28, 28), latent_dim=2, hidden_dims=[8], evaluation=spec)
    dm = ImageDataModule(root=str(data_root), download=False, val_size=100, eval_batch_size=64)
    quiet = {"enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **quiet)
    with model.testing_as("test_final"):
        final = trainer.test(model, datamodule=dm, verbose=False)[0]
    test = trainer.test(model, datamodule=dm, verbose=False)[0]
    names = {"elbo", "recon", "kl", "loss", "active_units", "nll", "iwae_k2"}
    assert set(final) == {f"test_final/{n}" for n in names}
    assert set(test) == {f"test/{n}" for n in names}
    for name in ("nll", "iwae_k2", "kl"):  # keyed importance samples, analytic KL: the same
        assert final[f"test_final/{name}"] == test[f"test/{name}"], name


def test_manifold_grid_orders_codes_as_the_figure_and_decode_mean_is_e_x_given_z() -> None:
    from aevb.vae import manifold_grid, prior_quantiles

    q = prior_quantiles(3)
    assert torch.allclose(q, torch.tensor([-0.9674, 0.0, 0.9674]), atol=1e-4)
    z = manifold_grid(3).view(3, 3, 2)  # rows, columns, (z_1, z_2)
    assert torch.equal(z[0, :, 0], q) and torch.equal(z[:, 0, 1], q.flip(0))
    model = VAE(data_shape=(1, 4, 4), latent_dim=2, hidden_dims=[8])
    codes = torch.randn(5, 2)
    expected = torch.sigmoid(model.decoder(codes)[:, 0])  # Bernoulli: E[x|z] = sigmoid(logits)
    assert torch.allclose(model.decode_mean(codes), expected)
