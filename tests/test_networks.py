"""Encoder/decoder shapes for both architectures, every likelihood, MNIST and Frey Face sizes."""

from __future__ import annotations

import pytest
import torch

from aevb.likelihoods import LIKELIHOODS
from aevb.networks import NetworkSpec, build_networks
from aevb.vae import VAE

LIKELIHOOD_KW = {
    "bernoulli": {},
    "continuous_bernoulli": {},
    "gaussian": {},
    "gaussian_learned": {"sigma_mode": "decoder"},
    "laplace": {"scale_mode": "pixel"},
}


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 28, 20)])
@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
def test_every_architecture_and_likelihood_trains_one_step(shape, architecture, likelihood) -> None:
    torch.manual_seed(0)
    model = VAE(
        data_shape=shape,
        latent_dim=3,
        hidden_dims=[16],
        architecture=architecture,
        channels=[4, 8],
        likelihood={"name": likelihood, **LIKELIHOOD_KW[likelihood]},
    )
    x = (torch.rand(5, *shape) > 0.5).float()
    assert model.encode(x).event_shape == (3,) and model.encode(x).batch_shape == (5,)
    assert model.decoder(torch.zeros(2, 3)).shape == (2, model.likelihood.params_per_pixel, *shape)
    assert model.sample(2).shape == (2, *shape) and model.reconstruct(x).shape == (5, *shape)
    loss = model.loss(model.elbo_terms(x))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_conv_refuses_image_sizes_its_strides_cannot_tile() -> None:
    with pytest.raises(ValueError, match="divisible by 4, got 28x18"):
        build_networks("conv", NetworkSpec((1, 28, 18), 2, [8], "relu", 1, [4, 8]))
    with pytest.raises(ValueError, match="model.architecture must be one of"):
        build_networks("resnet", NetworkSpec((1, 28, 28), 2, [8], "relu", 1))


def test_conv_decoder_output_depends_on_every_latent_and_covers_the_image() -> None:
    torch.manual_seed(0)
    enc, dec = build_networks("conv", NetworkSpec((1, 28, 20), 4, [32], "tanh", 2, [8, 16]))
    z = torch.randn(3, 4, requires_grad=True)
    out = dec(z)
    assert out.shape == (3, 2, 1, 28, 20)
    out.sum().backward()
    assert (z.grad.abs() > 0).all()
    x = torch.rand(3, 1, 28, 20, requires_grad=True)
    mean, logvar = enc(x)
    mean.sum().backward()
    # receptive field of the encoder spans the whole image: every pixel moves the code
    assert (x.grad.abs().sum(0) > 0).float().mean() > 0.95
