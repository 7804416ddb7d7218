"""Importance-weighted log p(x) and latent-usage metrics against exact answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from aevb import metrics
from aevb.epoch_metrics import EvaluationSettings
from aevb.vae import VAE

D, P, SIGMA = 2, 5, 0.5  # latent dims, observed dims, decoder noise


def linear_gaussian(seed: int = 0):
    """p(z)=N(0,I), p(x|z)=N(Wz+b, sigma^2 I): log p(x) = log N(x; b, WW^T + sigma^2 I) exactly."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(P, D, generator=g, dtype=torch.float64)
    b = torch.randn(P, generator=g, dtype=torch.float64)
    prior = Independent(Normal(torch.zeros(D, dtype=w.dtype), torch.ones(D, dtype=w.dtype)), 1)

    def decode(z: torch.Tensor) -> Independent:
        return Independent(Normal(z @ w.T + b, SIGMA), 1)

    def exact_log_px(x: torch.Tensor) -> torch.Tensor:
        cov = w @ w.T + SIGMA**2 * torch.eye(P, dtype=w.dtype)
        return MultivariateNormal(b, covariance_matrix=cov).log_prob(x)

    def posterior(x: torch.Tensor, shift: float = 0.0, log_scale: float = 0.0) -> Independent:
        """Diagonal q near the exact posterior N(M^-1 W^T (x-b)/s^2, M^-1), M = I + W^T W/s^2."""
        prec = torch.eye(D, dtype=w.dtype) + w.T @ w / SIGMA**2
        cov = torch.linalg.inv(prec)
        mean = (x - b) @ w @ cov / SIGMA**2 + shift
        logvar = torch.diagonal(cov).log().expand_as(mean) + 2 * log_scale
        return metrics.diagonal_gaussian(mean, logvar)

    x = decode(prior.sample((6,))).sample()
    return x, decode, prior, exact_log_px, posterior


def closed_form_elbo(x, q, w_decode, prior) -> torch.Tensor:
    """E_q[log N(x; Wz+b, s^2 I)] - KL(q||p) in closed form, from the decoder's mean map."""
    mu, var = q.base_dist.loc, q.base_dist.scale**2
    mean_x = w_decode(mu).base_dist.loc
    b = w_decode(torch.zeros_like(mu)).base_dist.loc
    w_cols = torch.stack(
        [
            w_decode(torch.eye(D, dtype=mu.dtype)[i].expand_as(mu)).base_dist.loc - b
            for i in range(D)
        ]
    )  # [D, B, P]
    trace = ((w_cols**2).sum(-1).T * var).sum(-1)  # tr(W diag(var) W^T)
    recon = -0.5 * (((x - mean_x) ** 2).sum(-1) + trace) / SIGMA**2 - 0.5 * P * math.log(
        2 * math.pi * SIGMA**2
    )
    return recon - metrics.kl_per_dim(q, prior).sum(-1)


def test_k5000_estimate_matches_exact_log_likelihood() -> None:
    x, decode, prior, exact, posterior = linear_gaussian()
    g = torch.Generator().manual_seed(1)
    for q, tol in ((posterior(x), 0.01), (posterior(x, shift=0.1, log_scale=0.3), 0.05)):
        log_w = metrics.importance_log_weights(x, q, decode, prior, k=5000, generator=g)
        est = metrics.iwae_bound(log_w)
        assert est.shape == (6,) and est.dtype == torch.float64
        assert torch.allclose(est, exact(x), atol=tol), (est, exact(x))


def test_k1_is_the_elbo_in_expectation_and_bounds_increase_with_k() -> None:
    x, decode, prior, exact, posterior = linear_gaussian(seed=2)
    q = posterior(x, shift=0.7, log_scale=-0.3)  # a poor q: the bounds differ clearly
    elbo = closed_form_elbo(x, q, decode, prior)
    # estimator A and B of the package's ELBO agree with the closed form (independent check)
    mc = metrics.elbo(x, q, decode, prior, samples=20000, kl="mc").elbo
    torch.testing.assert_close(mc, elbo, atol=0.1, rtol=0)
    log_w = metrics.importance_log_weights(
        x, q, decode, prior, k=20000, chunk=4096, generator=torch.Generator().manual_seed(3)
    )
    k1 = metrics.iwae_bound(log_w, 1)
    stderr = log_w.std(0) / math.sqrt(log_w.shape[0])
    assert torch.all((k1 - elbo).abs() < 4 * stderr + 1e-3), (k1, elbo, stderr)
    bounds = torch.stack([metrics.iwae_bound(log_w, k) for k in (1, 5, 50, 500, 5000)])
    assert torch.all(bounds[1:] >= bounds[:-1] - 1e-3), bounds  # non-decreasing in k
    assert torch.all(bounds[-1] > elbo + 0.1)  # tighter than the ELBO: NLL(k) <= -ELBO
    assert torch.all(bounds[-1] <= exact(x) + 0.02)  # and still a lower bound of log p(x)


def test_chunking_does_not_change_the_estimate() -> None:
    x, decode, prior, _, posterior = linear_gaussian(seed=4)
    q = posterior(x, shift=0.3)
    results = [
        metrics.importance_log_weights(
            x, q, decode, prior, k=37, chunk=chunk, generator=torch.Generator().manual_seed(5)
        )
        for chunk in (1, 4, 7, 64, 10_000)
    ]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="k"):
        metrics.importance_log_weights(x, q, decode, prior, k=0)


def test_vae_log_likelihood_is_seeded_and_at_least_the_elbo() -> None:
    torch.manual_seed(0)
    model = VAE(data_shape=(1, 6, 6), latent_dim=3, hidden_dims=[16]).eval()
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4))
    a = model.log_likelihood(x, 300, chunk=50, generator=torch.Generator().manual_seed(0))
    b = model.log_likelihood(x, 300, chunk=999, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5,)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with torch.no_grad():
        elbo = model.elbo(x, samples=5000)
    assert torch.all(a >= elbo - 0.05)


def test_active_units_and_per_dimension_kl_on_constructed_unused_dims(data_root) -> None:
    import lightning as L

    from aevb.data import ImageDataModule

    torch.manual_seed(0)
    settings = EvaluationSettings(iw_samples=20, iwae_ks=(1, 20))
    model = VAE(data_shape=(1, 28, 28), latent_dim=5, hidden_dims=[16], evaluation=settings)
    with torch.no_grad():  # dims 2..4: q(z_u|x) = N(0, 1) = p(z_u) for every x -> unused
        head = model.encoder.head  # rows [0:5] mean, [5:10] log-variance
        head.weight[2:5].zero_()
        head.bias[2:5].zero_()
        head.weight[7:10].zero_()
        head.bias[7:10].zero_()
        head.weight[0:2] *= 20  # dims 0, 1 clearly depend on x
    means = model.encode(torch.rand(300, 1, 28, 28)).mean.detach()
    activity = metrics.latent_activity(means)
    torch.testing.assert_close(activity, means.double().var(0, correction=0))
    assert metrics.active_units(activity) == 2
    dm = ImageDataModule(root=str(data_root), download=False, val_size=100, eval_batch_size=64)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    out = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert out["test/active_units"] == 2
    assert out["test/nll"] == pytest.approx(-out["test/iwae_k20"], abs=1e-3)
    assert out["test/iwae_k1"] <= out["test/iwae_k20"] and -out["test/nll"] >= out["test/elbo"] - 1
    kl = torch.tensor(model.test_latent_stats["kl_per_dim"])
    assert torch.all(kl[2:].abs() < 1e-6) and torch.all(kl[:2] > 0.1)
    assert sum(model.test_latent_stats["kl_per_dim"]) == pytest.approx(out["test/kl"], rel=1e-4)


@pytest.mark.parametrize("pixels", [784, 97, 130])  # groups of 56, 1 (97 is prime), 26
def test_binary_log_density_is_the_bernoulli_log_likelihood(pixels: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, pixels, generator=g) < 0.3).float()
    logits = torch.randn(3, 6, pixels, generator=g) * 8
    logits[0, 0, :5] = torch.tensor([-100.0, 100.0, -30.0, 30.0, 0.0])  # saturated pixels
    l64, x64 = logits.double(), x.double()
    # log p(x|l) = sum_p x log sigmoid(l) + (1 - x) log sigmoid(-l), written out in float64
    exact = (x64 * l64 - torch.log1p(torch.exp(-l64.abs())) - l64.clamp_min(0)).sum(-1)
    fast = metrics.binary_log_density(logits, 2 * x - 1)
    assert fast.shape == (3, 6) and fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), exact, rtol=2e-6, atol=1e-4)
    scratch = torch.empty(2 * logits.numel())  # reused work space: the same numbers
    assert torch.equal(metrics.binary_log_density(logits, 2 * x - 1, scratch), fast)
    # differentiable (scratch is then not used): d/dl = x - sigmoid(l)
    leaf = logits.clone().requires_grad_()
    metrics.binary_log_density(leaf, 2 * x - 1, scratch).sum().backward()
    torch.testing.assert_close(leaf.grad, (x - torch.sigmoid(logits)).expand_as(logits))


def test_importance_weights_of_bernoulli_images_match_log_prob() -> None:
    """The fast Bernoulli path of importance_log_weights against torch's Bernoulli.log_prob;
    grey images (allow_nonbinary) keep log_prob, bit for bit."""
    torch.manual_seed(0)
    model = VAE(data_shape=(1, 6, 6), latent_dim=3, hidden_dims=[16]).eval()
    model.likelihood.allow_nonbinary = True
    x = torch.bernoulli(torch.full((5, 1, 6, 6), 0.4))
    grey = torch.rand(5, 1, 6, 6)

    def log_w(images: torch.Tensor, decode) -> torch.Tensor:
        with torch.no_grad():
            q = model.encode(images)
            gen = torch.Generator().manual_seed(0)
            return metrics.importance_log_weights(
                images, q, decode, model.prior, 70, chunk=12, generator=gen
            )

    def opaque(z: torch.Tensor) -> _Opaque:  # the same density, not recognised as Bernoulli
        return _Opaque(model.decode(z))

    fast, slow = log_w(x, model.decode), log_w(x, opaque)
    assert not torch.equal(fast, slow)  # the fast path did run
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-4)
    assert torch.equal(log_w(grey, model.decode), log_w(grey, opaque))


class _Opaque(torch.distributions.Distribution):
    """A distribution that only forwards log_prob (hides its Bernoulli type)."""

    arg_constraints: dict = {}

    def __init__(self, inner: torch.distributions.Distribution) -> None:
        self.inner = inner
        super().__init__(inner.batch_shape, inner.event_shape, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.inner.log_prob(value)
