"""The variational objective and evaluation metrics. Pure torch: no Lightning, no files.

All quantities are in nats per datapoint: log-densities summed over pixels / latent
dimensions, one value per datapoint (callers average over the batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, kl_divergence

KL_ESTIMATORS = ("analytic", "mc")


def diagonal_gaussian(mean: Tensor, logvar: Tensor) -> Independent:
    """N(mean, diag(exp(logvar))) with the last dimension as the event (the paper's q(z|x))."""
    return Independent(Normal(mean, torch.exp(0.5 * logvar), validate_args=False), 1)


@dataclass(frozen=True)
class ELBOTerms:
    """Per-datapoint pieces of the bound, each a Tensor[B] in nats."""

    recon: Tensor  #: E_q(z|x)[log p(x|z)], Monte Carlo over L samples
    kl: Tensor  #: KL(q(z|x) || p(z)), analytic (estimator B) or Monte Carlo (estimator A)
    kl_per_dim: Tensor  #: [B, D] the same KL split over latent dimensions

    @property
    def elbo(self) -> Tensor:
        """The evidence lower bound L(x) = recon - KL (eq. 10 / eq. 7 of the paper)."""
        return self.recon - self.kl


def elbo(
    x: Tensor,
    posterior: Independent,
    decode: Callable[[Tensor], Distribution],
    prior: Independent,
    samples: int = 1,
    kl: str = "analytic",
) -> ELBOTerms:
    """The SGVB estimate of the ELBO with L=`samples` reparameterised draws z = mu + sigma*eps.

    kl="analytic": estimator B (eq. 10) -- -KL(q||p) in closed form + (1/L) sum_l log p(x|z_l).
    kl="mc": estimator A (eq. 6/7) -- (1/L) sum_l [log p(x|z_l) + log p(z_l) - log q(z_l|x)].
    Both are unbiased for the same bound; B has lower variance.
    """
    z = posterior.rsample((samples,))  # [L, B, D]
    batch = x.shape[0]
    px = decode(z.flatten(0, 1))  # batch of L*B
    log_px = px.log_prob(x.expand(samples, *x.shape).flatten(0, 1)).view(samples, batch)
    recon = log_px.mean(0)
    if kl == "analytic":
        kl_per_dim = kl_divergence(posterior.base_dist, prior.base_dist)
        kl_per_dim = kl_per_dim.expand(batch, -1)
    elif kl == "mc":
        log_ratio = posterior.base_dist.log_prob(z) - prior.base_dist.log_prob(z)  # [L, B, D]
        kl_per_dim = log_ratio.mean(0)
    else:
        raise ValueError(f"model.kl must be one of {KL_ESTIMATORS}, got {kl!r}")
    return ELBOTerms(recon=recon, kl=kl_per_dim.sum(-1), kl_per_dim=kl_per_dim)
