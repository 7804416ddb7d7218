"""The ELBO's pieces against torch.distributions and against Monte Carlo."""

from __future__ import annotations

import math

import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from aevb import metrics
from aevb.likelihoods import build_likelihood
from aevb.vae import VAE


def test_bernoulli_log_prob_matches_direct_formula() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 1, 1, 28, 28) * 3
    x = torch.bernoulli(torch.full((5, 1, 28, 28), 0.3))
    lik = build_likelihood("bernoulli", (1, 28, 28))
    got = lik(logits).log_prob(x)
    p = torch.sigmoid(logits.squeeze(1)).double()
    direct = (x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3))
    assert got.shape == (5,)
    torch.testing.assert_close(got.double(), direct, rtol=1e-5, atol=1e-3)
    reference = Independent(Bernoulli(logits=logits.squeeze(1)), 3).log_prob(x)
    torch.testing.assert_close(got, reference)


def test_analytic_kl_equals_torch_kl_divergence_and_closed_form() -> None:
    torch.manual_seed(1)
    mean, logvar = torch.randn(7, 4), torch.randn(7, 4)
    q = metrics.diagonal_gaussian(mean, logvar)
    prior = Independent(Normal(torch.zeros(4), torch.ones(4)), 1)
    decode = lambda z: Independent(Normal(z.sum(-1, keepdim=True), 1.0), 1)  # noqa: E731
    x = torch.zeros(7, 1)
    terms = metrics.elbo(x, q, decode, prior, samples=1, kl="analytic")
    torch.testing.assert_close(terms.kl, kl_divergence(q, prior))
    closed = -0.5 * (1 + logvar - mean**2 - logvar.exp()).sum(-1)  # paper, appendix B
    torch.testing.assert_close(terms.kl, closed)
    torch.testing.assert_close(terms.kl_per_dim.sum(-1), terms.kl)


def test_analytic_elbo_agrees_with_many_sample_monte_carlo() -> None:
    torch.manual_seed(2)
    model = VAE(data_shape=(1, 6, 6), latent_dim=3, hidden_dims=[16]).eval()
    x = torch.bernoulli(torch.full((4, 1, 6, 6), 0.4))
    n = 20_000
    with torch.no_grad():
        analytic = model.elbo(x, samples=n)  # analytic KL + n-sample recon
        q = model.encode(x)
        z = q.sample((n,))  # [n, B, D]
        log_w = (
            model.decode(z.flatten(0, 1)).log_prob(x.repeat(n, 1, 1, 1)).view(n, 4)
            + model.prior.log_prob(z)
            - q.log_prob(z)
        )
    mc, se = log_w.mean(0), log_w.std(0) / math.sqrt(n)
    assert torch.all((analytic - mc).abs() < 4 * se + 1e-3), (analytic, mc, se)
    # the bound is below log p(x) estimated by importance sampling with the same draws
    log_px = torch.logsumexp(log_w, 0) - math.log(n)
    assert torch.all(analytic <= log_px + 1e-4)


def test_elbo_units_are_per_datapoint_sums() -> None:
    model = VAE(data_shape=(1, 4, 4), latent_dim=2, hidden_dims=[8])
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    terms = model.elbo_terms(x)
    assert terms.recon.shape == terms.kl.shape == (3,)
    # log p(x|z) of 16 pixels is at least 16 * log(sigmoid(-|logit|)) and at most 0
    assert torch.all(terms.recon <= 0) and torch.all(terms.kl >= 0)
    loss = model.loss(terms)
    torch.testing.assert_close(loss, -(terms.recon - terms.kl).mean())
