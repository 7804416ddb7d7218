"""Each p(x|z) against its density written out independently here (float64, numpy/math)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aevb.likelihoods import LIKELIHOODS, LOGVAR_MAX, LOGVAR_MIN, build_likelihood

SHAPE = (1, 4, 3)
PIXELS = 12


def _params(n: int, per_pixel: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, per_pixel, *SHAPE, generator=g, dtype=torch.float64) * 2


def _grey(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g, dtype=torch.float64)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _per_image(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1).sum(1)


def test_bernoulli_is_minus_bce_summed_over_pixels() -> None:
    lik = build_likelihood("bernoulli", SHAPE)
    params = _params(5, 1)
    x = (_grey(5) > 0.5).double()
    p = _sigmoid(params[:, 0].numpy())
    xn = x.numpy()
    expected = _per_image(xn * np.log(p) + (1 - xn) * np.log(1 - p))
    dist = lik(params)
    assert dist.event_shape == SHAPE and dist.batch_shape == (5,)
    np.testing.assert_allclose(dist.log_prob(x).numpy(), expected, rtol=1e-10)


def test_continuous_bernoulli_includes_its_log_normaliser() -> None:
    lik = build_likelihood("continuous_bernoulli", SHAPE)
    params = _params(5, 1)
    x = _grey(5)
    lam = _sigmoid(params[:, 0].numpy())
    xn = x.numpy()
    # C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda); C(1/2) = 2
    near_half = np.abs(lam - 0.5) < 1e-3
    safe = np.where(near_half, 0.25, lam)
    log_c = np.where(near_half, math.log(2), np.log(2 * np.arctanh(1 - 2 * safe) / (1 - 2 * safe)))
    expected = _per_image(xn * np.log(lam) + (1 - xn) * np.log(1 - lam) + log_c)
    np.testing.assert_allclose(lik(params).log_prob(x).numpy(), expected, rtol=1e-6)
    # a density on [0,1]: the normaliser integrates exp(log p) to 1 for one pixel
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    one = torch.distributions.ContinuousBernoulli(probs=torch.tensor(0.8, dtype=torch.float64))
    assert torch.trapezoid(one.log_prob(grid).exp(), grid).item() == pytest.approx(1, abs=1e-6)


def _normal_logpdf(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)


def test_gaussian_fixed_sigma_is_scaled_mse_plus_normalising_constant() -> None:
    lik = build_likelihood("gaussian", SHAPE, sigma=0.3)
    params = _params(4, 1)
    x = _grey(4)
    mu = _sigmoid(params[:, 0].numpy())
    expected = _per_image(_normal_logpdf(x.numpy(), mu, np.full_like(mu, 0.3)))
    # sigma is kept as a float32 buffer: agreement to float32 precision
    np.testing.assert_allclose(lik(params).log_prob(x).numpy(), expected, rtol=1e-6)
    # the MSE correspondence: -log p = ||x - mu||^2 / (2 sigma^2) + const
    sse = ((x.numpy() - mu) ** 2).reshape(4, -1).sum(1)
    const = PIXELS * (math.log(0.3) + 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(-expected, sse / (2 * 0.09) + const, rtol=1e-10)


@pytest.mark.parametrize("mode", ["global", "pixel"])
def test_gaussian_learned_scale_is_a_trained_parameter(mode: str) -> None:
    lik = build_likelihood("gaussian_learned", SHAPE, sigma_mode=mode, init_sigma=0.5).double()
    assert lik.params_per_pixel == 1
    with torch.no_grad():
        lik.log_scale.fill_(math.log(0.2))
    params = _params(3, 1)
    x = _grey(3)
    mu = _sigmoid(params[:, 0].numpy())
    expected = _per_image(_normal_logpdf(x.numpy(), mu, np.full_like(mu, 0.2)))
    log_p = lik(params).log_prob(x)
    np.testing.assert_allclose(log_p.detach().numpy(), expected, rtol=1e-10)
    log_p.sum().backward()
    assert lik.log_scale.grad is not None and torch.all(lik.log_scale.grad != 0)
    assert lik.log_scale.shape == (() if mode == "global" else SHAPE)


def test_gaussian_decoder_mode_reads_a_linear_clamped_log_variance() -> None:
    lik = build_likelihood("gaussian_learned", SHAPE, sigma_mode="decoder")
    assert lik.params_per_pixel == 2
    params = _params(3, 2)
    params[0, 1] = 40.0  # beyond the clamp: sigma must stop at exp(LOGVAR_MAX / 2)
    params[1, 1] = -40.0
    x = _grey(3)
    mu = _sigmoid(params[:, 0].numpy())
    logvar = np.clip(params[:, 1].numpy(), LOGVAR_MIN, LOGVAR_MAX)
    expected = _per_image(_normal_logpdf(x.numpy(), mu, np.exp(0.5 * logvar)))
    np.testing.assert_allclose(lik(params).log_prob(x).numpy(), expected, rtol=1e-10)
    assert torch.isfinite(lik(params).log_prob(x)).all()
    np.testing.assert_allclose(lik.mean(params).numpy(), mu)


@pytest.mark.parametrize("mode", ["fixed", "decoder"])
def test_laplace_is_l1_over_scale_plus_log_2b(mode: str) -> None:
    lik = build_likelihood("laplace", SHAPE, scale=0.25, scale_mode=mode)
    params = _params(4, lik.params_per_pixel)
    x = _grey(4)
    mu = _sigmoid(params[:, 0].numpy())
    if mode == "fixed":
        b = np.full_like(mu, 0.25)
    else:
        b = np.exp(0.5 * np.clip(params[:, 1].numpy(), LOGVAR_MIN, LOGVAR_MAX))
    expected = _per_image(-np.abs(x.numpy() - mu) / b - np.log(2 * b))
    np.testing.assert_allclose(lik(params).log_prob(x).numpy(), expected, rtol=1e-6)


def test_binary_likelihood_refuses_grey_levels_unless_opted_in() -> None:
    grey = _grey(2).float()
    with pytest.raises(ValueError, match="binary data"):
        build_likelihood("bernoulli", SHAPE).check_data(grey)
    build_likelihood("bernoulli", SHAPE, allow_nonbinary=True).check_data(grey)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        build_likelihood("continuous_bernoulli", SHAPE).check_data(grey * 3)
    build_likelihood("continuous_bernoulli", SHAPE).check_data((grey > 0.5).float())


def test_registry_errors_name_the_field_and_the_choices() -> None:
    with pytest.raises(ValueError, match="likelihood.name must be one of"):
        build_likelihood("poisson", SHAPE)
    with pytest.raises(ValueError, match="likelihood=gaussian"):
        build_likelihood("gaussian", SHAPE, sigma_mode="pixel")
    with pytest.raises(ValueError, match="sigma_mode"):
        build_likelihood("gaussian_learned", SHAPE, sigma_mode="row")
    with pytest.raises(ValueError, match="> 0"):
        build_likelihood("gaussian", SHAPE, sigma=0.0)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_every_likelihood_has_image_event_shape_and_unit_range_means(name: str) -> None:
    lik = build_likelihood(name, SHAPE)
    params = _params(6, lik.params_per_pixel).float()
    dist = lik(params)
    assert dist.event_shape == SHAPE and dist.batch_shape == (6,)
    mean = lik.mean(params)
    assert mean.shape == (6, *SHAPE) and mean.min() >= 0 and mean.max() <= 1


def test_z_ignored_bernoulli_is_minus_the_pixel_entropies_at_the_mean() -> None:
    """On the data it was fitted to, the ML independent Bernoulli has log-likelihood
    sum_j [p_j log p_j + (1 - p_j) log(1 - p_j)], p_j the pixel's mean."""
    x = (_grey(400) > 0.3).double()
    fitted = build_likelihood("bernoulli", SHAPE).z_ignored(x)
    p = x.mean(0).numpy()
    expected = float(np.sum(p * np.log(p) + (1 - p) * np.log(1 - p)))
    assert float(fitted.log_prob(x).mean()) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("mode", ["pixel", "decoder", "global"])
def test_z_ignored_gaussian_is_minus_half_log_two_pi_e_variance(mode: str) -> None:
    """ML Gaussian on its own data: -1/2 sum_j log(2 pi e sigma_j^2) (sigma^2 pooled: global)."""
    x = _grey(500) * torch.linspace(0.2, 1.0, PIXELS, dtype=torch.float64).reshape(SHAPE)
    fitted = build_likelihood("gaussian_learned", SHAPE, sigma_mode=mode).z_ignored(x)
    var = ((x - x.mean(0)) ** 2).mean(0).numpy()
    var = np.full_like(var, var.mean()) if mode == "global" else var
    expected = -0.5 * float(np.sum(np.log(2 * math.pi * math.e * var)))
    assert float(fitted.log_prob(x).mean()) == pytest.approx(expected, rel=1e-9)


def test_z_ignored_clamps_like_the_model_and_laplace_uses_the_median() -> None:
    x = _grey(301)
    x[:, 0, 0, 0] = 0.5  # a constant pixel: variance 0, clamped at exp(LOGVAR_MIN)
    gauss = build_likelihood("gaussian_learned", SHAPE, sigma_mode="pixel").z_ignored(x)
    assert float(gauss.base_dist.scale[0, 0, 0]) == pytest.approx(math.exp(0.5 * LOGVAR_MIN))
    laplace = build_likelihood("laplace", SHAPE, scale_mode="pixel").z_ignored(x)
    b = (x - x.median(0).values).abs().mean(0).clamp(min=math.exp(0.5 * LOGVAR_MIN))
    expected = -float(torch.log(2 * b).sum()) - float(((x - x.median(0).values).abs() / b).sum(
        (1, 2, 3)).mean())  # fmt: skip
    assert float(laplace.log_prob(x.double()).mean()) == pytest.approx(expected, rel=1e-9)
    fixed = build_likelihood("gaussian", SHAPE, sigma=0.5).z_ignored(x)
    assert torch.allclose(fixed.base_dist.scale, torch.full(SHAPE, 0.5, dtype=torch.float64))
    assert build_likelihood("continuous_bernoulli", SHAPE).z_ignored(x) is None  # no closed form
