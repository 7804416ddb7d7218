"""Batched HMC and the Appendix D marginal-likelihood estimator against known truths: a
Gaussian target's moments, a linear-Gaussian model's closed-form log p(x), and a nonlinear
Nz = 2 model's log p(x) by quadrature over z (cross-checked by importance sampling)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, MultivariateNormal, Normal

from aevb.hmc import HMC, appendix_d_log_likelihood, fit_gaussian

F64 = torch.float64


def _linear_gaussian(batch: int, seed: int = 0, latent_dim: int = 2, data_dim: int = 10):
    """z ~ N(0, I_Nz), x|z ~ N(Wz + b, 0.5^2 I_D) (Nz = 2, D = 10 unless given): log p(x) and
    p(z|x) in closed form."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(data_dim, latent_dim, generator=g, dtype=F64)
    b = torch.randn(data_dim, generator=g, dtype=F64)
    z = torch.randn(batch, latent_dim, generator=g, dtype=F64)
    x = z @ w.T + b + 0.5 * torch.randn(batch, data_dim, generator=g, dtype=F64)

    def log_joint(z: torch.Tensor) -> torch.Tensor:
        return Normal(0.0, 1.0).log_prob(z).sum(-1) + Normal(z @ w.T + b, 0.5).log_prob(x).sum(-1)

    truth = MultivariateNormal(b, w @ w.T + 0.25 * torch.eye(data_dim, dtype=F64)).log_prob(x)
    cov = torch.linalg.inv(torch.eye(latent_dim, dtype=F64) + w.T @ w / 0.25)
    mean = (cov @ w.T @ (x - b).T / 0.25).T
    return log_joint, truth, MultivariateNormal(mean, covariance_matrix=cov)


def test_hmc_draws_match_the_posterior_moments_at_the_target_acceptance() -> None:
    log_joint, _, posterior = _linear_gaussian(batch=8)
    hmc = HMC(log_joint, leapfrog_steps=4, target_accept=0.9,
              generator=torch.Generator().manual_seed(1))  # fmt: skip
    chains = hmc.burn_in(hmc.init(torch.zeros(8, 2, dtype=F64)), 200)
    result = hmc.sample(chains, 2000)
    assert result.samples.shape == (2000, 8, 2)
    assert (result.accept_rate - 0.9).abs().max() < 0.07  # dual averaging hit the target
    sd = posterior.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((result.samples.mean(0) - posterior.mean) / sd).abs().max() < 0.15
    fitted = fit_gaussian(result.samples).covariance_matrix
    assert torch.allclose(fitted, posterior.covariance_matrix.expand_as(fitted), rtol=0.2,
                          atol=0.1 * float(sd.min()) ** 2)  # fmt: skip


def test_same_seed_same_chains_and_settings_are_checked() -> None:
    log_joint, _, _ = _linear_gaussian(batch=3)
    runs = [
        appendix_d_log_likelihood(log_joint, torch.zeros(3, 2, dtype=F64), burn_in=20,
                                  num_samples=10, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="leapfrog_steps must be an integer >= 1"):
        HMC(log_joint, leapfrog_steps=0)
    with pytest.raises(ValueError, match="target_accept must be in"):
        HMC(log_joint, target_accept=1.0)


def test_appendix_d_estimator_recovers_the_linear_gaussian_log_likelihood() -> None:
    """The paper's settings (50 draws, 4 leapfrog steps): unbiased to a few hundredths of a nat,
    spread (one datapoint's error) under 0.15 nat. Measured: mean -0.006, sd 0.07 (64 points)."""
    log_joint, truth, _ = _linear_gaussian(batch=64)
    est = appendix_d_log_likelihood(log_joint, torch.zeros(64, 2, dtype=F64),
                                    generator=torch.Generator().manual_seed(1))  # fmt: skip
    err = est - truth
    assert abs(float(err.mean())) < 0.05 and float(err.std()) < 0.15


def test_appendix_d_estimator_degrades_with_the_latent_dimension_unless_given_more_draws() -> None:
    """The paper keeps Nz = 3 for Fig. 3 because the estimate becomes unreliable at higher Nz:
    on a linear-Gaussian model with 100 observed dimensions, one datapoint's error at the paper's
    50 draws spreads about 3x wider at Nz = 10 than at Nz = 2 (0.33-0.39 vs 0.11-0.14 nat over
    seeds 0-2), and 200 thinned draws bring Nz = 10 back under 0.08 (docs/evaluation.md)."""

    def error(latent_dim: int, **kw: int) -> torch.Tensor:
        log_joint, truth, _ = _linear_gaussian(32, 0, latent_dim, data_dim=100)
        z0 = torch.zeros(32, latent_dim, dtype=F64)
        gen = torch.Generator().manual_seed(1)
        return appendix_d_log_likelihood(log_joint, z0, generator=gen, **kw) - truth

    low, high = error(2), error(10)
    assert float(high.std()) > 2 * float(low.std())
    more = error(10, num_samples=200, thin=2)
    assert abs(float(more.mean())) < 0.05 and float(more.std()) < 0.15


def _nonlinear(batch: int, pixels: int = 40):
    """z ~ N(0, I_2), x|z ~ Bernoulli(MLP(z)) (tanh, 20 units): a non-Gaussian posterior."""
    g = torch.Generator().manual_seed(3)
    w1, b1 = 2 * torch.randn(2, 20, generator=g, dtype=F64), torch.randn(20, generator=g, dtype=F64)
    w2 = 1.5 * torch.randn(20, pixels, generator=g, dtype=F64)
    b2 = torch.randn(pixels, generator=g, dtype=F64)

    def logits(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ w1 + b1) @ w2 + b2

    z = torch.randn(batch, 2, generator=g, dtype=F64)
    x = (torch.rand(batch, pixels, generator=g, dtype=F64) < torch.sigmoid(logits(z))).to(F64)

    def log_joint(z: torch.Tensor) -> torch.Tensor:
        return Normal(0.0, 1.0).log_prob(z).sum(-1) + Bernoulli(logits=logits(z)).log_prob(x).sum(
            -1
        )

    def quadrature(n: int, half_width: float = 7.0) -> torch.Tensor:
        """log p(x) by the midpoint rule on an n x n grid over [-w, w]^2."""
        h = 2 * half_width / n
        grid = -half_width + h * (torch.arange(n, dtype=F64) + 0.5)
        zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)
        parts = []
        for chunk in zz.split(4096):  # [4096, B, pixels] at a time: bounded memory
            log_p = Normal(0.0, 1.0).log_prob(chunk).sum(-1)
            log_p = log_p + Bernoulli(logits=logits(chunk)).log_prob(x).sum(-1)
            parts.append(torch.logsumexp(log_p, 0))
        return torch.logsumexp(torch.stack(parts), 0) + 2 * math.log(h)

    return log_joint, logits, x, quadrature


def prior_importance_sampling(logits, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """log (1/k) sum_i p(x|z_i), z_i ~ p(z): importance sampling with the prior as proposal."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for size in [4000] * (k // 4000) + ([k % 4000] if k % 4000 else []):
        z = torch.randn(size, 1, 2, generator=g, dtype=F64)
        parts.append(torch.logsumexp(Bernoulli(logits=logits(z)).log_prob(x).sum(-1), 0))
    return torch.logsumexp(torch.stack(parts), 0) - math.log(k)


def test_appendix_d_estimator_against_quadrature_and_importance_sampling() -> None:
    """The quadrature is converged far below 0.01 nat (two grids agree) and IS with 10^5 prior
    draws agrees with it. At the paper's settings the estimator's per-point error has a spread of
    ~0.25 nat and a small positive mean (Jensen: an upper bound in expectation); Fig. 3 averages
    it over 1000 points. More and thinned draws tighten it."""
    log_joint, logits, x, quadrature = _nonlinear(batch=32)
    truth = quadrature(400)
    assert (truth - quadrature(300)).abs().max() < 1e-3
    importance = prior_importance_sampling(logits, x, k=100_000, seed=4)
    assert (importance - truth).abs().max() < 0.1
    start = torch.zeros(32, 2, dtype=F64)
    paper = appendix_d_log_likelihood(log_joint, start, generator=torch.Generator().manual_seed(2))
    err = paper - truth  # measured: mean 0.06, sd 0.24, max 0.84
    assert 0 < float(err.mean()) < 0.15 and float(err.std()) < 0.35
    more = appendix_d_log_likelihood(log_joint, start, num_samples=200, thin=2,
                                     generator=torch.Generator().manual_seed(2))  # fmt: skip
    err = more - truth
    assert abs(float(err.mean())) < 0.08 and float(err.std()) < 0.2
