"""aevb.latent_model: the prior, decoder and likelihood every algorithm shares, their samples,
the training-sample count, the optimiser and the data check."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from aevb.latent_model import LatentVariableModel
from aevb.mcem import MonteCarloEM
from aevb.vae import VAE

SHAPE = (1, 4, 4)


class Model(LatentVariableModel):
    """The smallest subclass: the base's arguments as its hparams."""

    def __init__(
        self,
        latent_dim: int = 2,
        optim: dict[str, Any] | None = None,
        likelihood: dict[str, Any] | None = None,
        encoder: bool = True,
        init_std: float | None = None,
    ) -> None:
        super().__init__(
            SHAPE, latent_dim, [8], "relu", "mlp", likelihood, init_std, (32, 64), encoder
        )
        self.save_hyperparameters()


def _attach(model: LatentVariableModel, **trainer: Any) -> None:
    model._trainer = SimpleNamespace(**trainer)


def test_without_the_encoder_the_decoder_starts_from_the_same_weights() -> None:
    torch.manual_seed(0)
    both = Model(encoder=True, init_std=None)
    torch.manual_seed(0)
    decoder_only = Model(encoder=False)
    assert not hasattr(decoder_only, "encoder") and hasattr(both, "encoder")
    for a, b in zip(both.decoder.parameters(), decoder_only.decoder.parameters(), strict=True):
        assert torch.equal(a, b)
    # so MCEM's decoder starts where the VAE's does for the same seed
    torch.manual_seed(3)
    vae = VAE(SHAPE, latent_dim=2, hidden_dims=[8], activation="tanh")
    torch.manual_seed(3)
    mcem = MonteCarloEM(SHAPE, latent_dim=2, hidden_dims=[8], activation="tanh")
    assert all(
        torch.equal(vae.decoder.state_dict()[k], v) for k, v in mcem.decoder.state_dict().items()
    )


def test_parameters_are_ordered_likelihood_encoder_decoder() -> None:
    # optimiser states in checkpoints are keyed by this order
    model = Model(likelihood={"name": "laplace", "scale_mode": "global"})  # a learned scale
    names = [n.split(".")[0] for n, _ in model.named_parameters()]
    assert names == sorted(names, key=["likelihood", "encoder", "decoder"].index)
    assert set(names) == {"likelihood", "encoder", "decoder"}
    keys = list(Model().state_dict())
    assert "samples_seen" in keys and "prior_loc" not in keys  # the prior is not saved


def test_init_std_draws_every_parameter_from_a_narrow_normal() -> None:
    torch.manual_seed(0)
    weights = torch.cat([p.detach().flatten() for p in Model(init_std=0.01).parameters()])
    assert weights.abs().max() < 0.06 and abs(float(weights.std()) - 0.01) < 0.002


def test_the_prior_is_a_standard_normal() -> None:
    prior = Model(latent_dim=3).prior
    assert prior.event_shape == (3,)
    assert float(prior.log_prob(torch.zeros(3))) == pytest.approx(-1.5 * math.log(2 * math.pi))


def test_decode_mean_and_samples_are_e_x_given_z() -> None:
    model = Model()
    z = torch.randn(5, 2)
    logits = model.decoder(z).squeeze(-4)
    assert model.decode(z).log_prob(torch.zeros(5, *SHAPE)).shape == (5,)
    assert torch.allclose(model.decode_mean(z), torch.sigmoid(logits))  # Bernoulli: p = sigmoid
    drawn = torch.randn(4, 2, generator=torch.Generator().manual_seed(7))
    sampled = model.sample(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sampled, model.decode_mean(drawn)) and not sampled.requires_grad


def test_count_samples_counts_every_rank_on_host_and_device() -> None:
    model = Model()
    _attach(model, world_size=4)
    model.count_samples(10)
    model.count_samples(5)
    assert model.samples_seen_host == 60 and int(model.samples_seen) == 60
    model.samples_seen_host = 0
    model.on_train_start()  # after a resume's load: the host count from the buffer
    assert model.samples_seen_host == 60


def test_the_optimiser_is_the_configs_or_the_models_default() -> None:
    model = Model(optim={"name": "sgd", "lr": 0.5, "momentum": 0.9})
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
    default = Model().configure_optimizers()
    assert isinstance(default, torch.optim.Adam) and default.param_groups[0]["lr"] == 1e-3
    mcem = MonteCarloEM(SHAPE, hidden_dims=[8]).configure_optimizers()
    assert isinstance(mcem, torch.optim.Adagrad) and mcem.param_groups[0]["lr"] == 0.01


def test_fit_start_refuses_data_outside_the_likelihoods_support() -> None:
    model = Model()
    grey = SimpleNamespace(val_images=torch.full((3, *SHAPE), 0.5))
    _attach(model, datamodule=grey)
    with pytest.raises(ValueError, match="binary data"):
        model.on_fit_start()
    _attach(model, datamodule=SimpleNamespace(val_images=torch.ones(3, *SHAPE)))
    model.on_fit_start()
