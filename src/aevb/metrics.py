"""The variational objective and evaluation metrics. Pure torch: no Lightning, no files.

All quantities are in nats per datapoint: log-densities summed over pixels / latent
dimensions, one value per datapoint (callers average over the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal, kl_divergence

from aevb.hmc import appendix_d_log_likelihood
from aevb.numerics import wide_dtype
from aevb.registry import KL_ESTIMATORS
from aevb.rng import KeyedNormal


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


# ----- importance-weighted evaluation (Burda, Grosse & Salakhutdinov 2016) ------------------
#: default decoder rows (samples x datapoints) per pass of `importance_log_weights`: small on
#: CPU so each pass's [rows, pixels] tensors stay in cache, large on accelerators
IW_CHUNK = {"cpu": 2048, "default": 65536}


def importance_log_weights(
    x: Tensor,
    posterior: Independent,
    decode: Callable[[Tensor], Distribution],
    prior: Distribution,
    k: int,
    chunk: int | None = None,
    generator: torch.Generator | None = None,
    noise: KeyedNormal | None = None,
) -> Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for k draws z_i ~ q(z|x): Tensor[k, B].

    `posterior` is a diagonal Gaussian (`diagonal_gaussian`) with batch [B]; x is encoded once by
    the caller. Draws are z = mu + sigma * eps with eps from `noise` (keyed by example: the same
    on every device, `aevb.rng.KeyedNormal`) or else from `generator` (on its own device, e.g. a
    CPU generator for a GPU model), one [B, D] draw per sample index, so the result does not
    depend on `chunk`, the most decoder rows evaluated at once (None: `IW_CHUNK` for the device).
    Bernoulli p(x|z) of binary x take `binary_log_density` (a third of the time of `log_prob`).
    """
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k (importance samples) must be an integer >= 1, got {k!r}")
    if chunk is None:
        chunk = IW_CHUNK.get(x.device.type, IW_CHUNK["default"])
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    loc, scale = posterior.base_dist.loc, posterior.base_dist.scale  # [B, D]
    batch = x.shape[0]
    per_pass = max(1, min(k, chunk // max(batch, 1)))  # samples per decoder pass
    rows = max(1, chunk // per_pass)  # datapoints per decoder pass
    # z and log p(z) - log q(z|x) for `span` samples at once: fewer small ops (same values)
    span = per_pass * max(1, SAMPLE_SPAN // per_pass)
    pixels = math.prod(x.shape[1:])
    sign = scratch = None  # x as +-1 for binary_log_density, and its work space
    if bool(((x == 0) | (x == 1)).all()):
        sign = (2 * x - 1).flatten(1).to(loc.dtype)
        scratch = loc.new_empty(2 * per_pass * min(rows, batch) * pixels)
    out = torch.empty(k, batch, dtype=loc.dtype, device=loc.device)
    for a in range(0, k, span):
        z = loc + scale * _draws(a, min(span, k - a), loc, generator, noise)  # [span, B, D]
        torch.sub(prior.log_prob(z), posterior.log_prob(z), out=out[a : a + z.shape[0]])
        for i in range(0, z.shape[0], per_pass):
            zi, log_w = z[i : i + per_pass], out[a + i : a + i + per_pass]
            s = zi.shape[0]
            for j in range(0, batch, rows):
                zj, xj = zi[:, j : j + rows], x[j : j + rows]
                n = zj.shape[1]
                px = decode(zj.flatten(0, 1))
                logits = bernoulli_logits(px) if sign is not None else None
                if logits is not None and logits.numel() == s * n * pixels:
                    log_px = binary_log_density(logits.view(s, n, -1), sign[j : j + n], scratch)
                else:
                    log_px = px.log_prob(xj.expand(s, *xj.shape).flatten(0, 1)).view(s, n)
                log_w[:, j : j + n] += log_px
    return out


#: importance samples whose z and log p(z) - log q(z|x) are computed at once
SAMPLE_SPAN = KeyedNormal.BLOCK


def _draws(
    start: int,
    count: int,
    loc: Tensor,
    generator: torch.Generator | None,
    noise: KeyedNormal | None,
) -> Tensor:
    """eps for samples start, ..., start + count - 1: Tensor[count, B, D] on loc's device."""
    if noise is not None:
        return noise.take(start, count).to(device=loc.device, dtype=loc.dtype)
    where = generator.device if generator is not None else loc.device
    draws = [
        torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=where)
        for _ in range(count)
    ]
    return torch.stack(draws).to(loc.device)


def bernoulli_logits(px: Distribution) -> Tensor | None:
    """The logits of p(x|z) = Independent(Bernoulli(logits=...)) (`aevb.likelihoods`), else None."""
    if isinstance(px, Independent) and isinstance(px.base_dist, Bernoulli):
        return vars(px.base_dist).get("logits")  # None if made from probs
    return None


def binary_log_density(logits: Tensor, sign: Tensor, scratch: Tensor | None = None) -> Tensor:
    """sum_p log Bernoulli(x_p; sigmoid(l_p)) of binary x, given as sign = 2x - 1: Tensor[...].

    With t = sign * l, each term is log sigmoid(t) = min(t, 0) + log sigmoid(|t|). The second
    sum is taken as the log of products over groups of up to 64 pixels (factors in [1/2, 1), so
    a product stays above 2^-64): one log per group rather than the log1p per pixel that
    dominates `Bernoulli.log_prob` on CPUs. Equal to it within float32 rounding of the sums.
    logits: [..., B, P] (pixels flattened), sign: [B, P]; scratch: room for two tensors of
    logits' size, reused across calls (fresh memory costs page faults on every call). With
    gradients on, it is torch's `logsigmoid`, summed.
    """
    if logits.requires_grad and torch.is_grad_enabled():  # smooth gradients (|t| has a kink)
        return F.logsigmoid(logits * sign).sum(-1)
    size = logits.numel()
    if scratch is None:
        scratch = logits.new_empty(2 * size)
    t = torch.mul(logits, sign, out=scratch[:size].view(logits.shape))
    tail = torch.abs(t, out=scratch[size : 2 * size].view(logits.shape)).sigmoid_()
    pixels = t.shape[-1]
    group = max(g for g in range(1, min(64, pixels) + 1) if pixels % g == 0)
    log_tail = tail.unflatten(-1, (pixels // group, group)).prod(-1).log_().sum(-1)
    return t.clamp_max_(0).sum(-1).add_(log_tail)


def iwae_bound(log_w: Tensor, k: int | None = None) -> Tensor:
    """The k-sample importance-weighted bound per datapoint, Tensor[B] (nats, `wide_dtype`).

    IWAE_k = E[log (1/k) sum_i w_i] <= log p(x) (Burda et al., eq. 8), from log weights [N, B]:
    the mean over the N // k disjoint groups of k weights (k=N: the plain estimate of log p(x);
    k=1: the estimator-A ELBO averaged over N draws). The importance-sampling estimate of
    log p(x) of Burda et al. is `iwae_bound(importance_log_weights(...))`: a lower bound in
    expectation that tightens as k grows.
    """
    n = log_w.shape[0]
    k = n if k is None else k
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of log weights), got {k}")
    groups = n // k
    lw = log_w[: groups * k].to(wide_dtype(log_w.device)).view(groups, k, *log_w.shape[1:])
    return (torch.logsumexp(lw, dim=1) - math.log(k)).mean(0)


# ----- latent usage ---------------------------------------------------------------------------
def kl_per_dim(posterior: Independent, prior: Independent) -> Tensor:
    """KL(q(z_u|x) || p(z_u)) per latent dimension u, analytic: Tensor[B, D] in nats."""
    return kl_divergence(posterior.base_dist, prior.base_dist).expand(posterior.batch_shape + (-1,))


def latent_activity_from_moments(n: Tensor | float, sum_: Tensor, sum_sq: Tensor) -> Tensor:
    """A_u = Cov_x(E_q[z_u|x]) from the count, sum and sum of squares of posterior means: [D].

    Computed in float64 (population variance) so streaming sums over a test set stay exact enough.
    """
    wide = wide_dtype(sum_.device)
    mean = sum_.to(wide) / n
    return (sum_sq.to(wide) / n - mean**2).clamp_min(0.0)


def latent_activity(means: Tensor) -> Tensor:
    """A_u = Cov_x(E_q[z_u|x]) over a dataset of posterior means [N, D] (Burda et al., sec. 5.2)."""
    m = means.to(wide_dtype(means.device))
    return latent_activity_from_moments(m.shape[0], m.sum(0), (m**2).sum(0))


def active_units(activity: Tensor, threshold: float = 0.01) -> int:
    """Number of latent dimensions with activity A_u > threshold (Burda et al. use 0.01)."""
    return int((activity > threshold).sum())


def posterior_start(
    x: Tensor,
    decode: Callable[[Tensor], Distribution],
    prior: Independent,
    candidates: int,
    generator: torch.Generator,
    z0: Tensor | None = None,
) -> Tensor:
    """A starting point per datapoint for a chain on p(z|x): the draw with the highest
    log p(x, z) among `candidates` prior draws (and z0, e.g. an encoder's mean), [B, D].

    The draws come from the CPU `generator`, so a seed gives the same start on every device.
    """
    batch, dim = x.shape[0], prior.event_shape[0]
    loc = prior.base_dist.loc
    z = torch.randn(candidates, batch, dim, generator=generator, dtype=loc.dtype).to(loc.device)
    if z0 is not None:
        z = torch.cat([z0.detach().unsqueeze(0), z])
    with torch.no_grad():
        score = torch.stack([prior.log_prob(zk) + decode(zk).log_prob(x) for zk in z])
    return z.gather(0, score.argmax(0)[None, :, None].expand(1, batch, dim)).squeeze(0)


@dataclass(frozen=True)
class AppendixD:
    """The AEVB paper's Appendix D estimate of log p(x) for a decoder and prior (`aevb.hmc`).

    Settings: `num_samples` L posterior draws to fit q(z) and L fresh ones (Appendix E: 50),
    `leapfrog_steps` (4), `burn_in` step-size-tuning proposals, `thin`, `target_accept`; chains
    start at `posterior_start` with `candidates` prior draws (plus the encoder's mean, if given).
    """

    num_samples: int = 50
    burn_in: int = 100
    leapfrog_steps: int = 4
    thin: int = 1
    target_accept: float = 0.9
    candidates: int = 64

    def __call__(
        self,
        x: Tensor,
        decode: Callable[[Tensor], Distribution],
        prior: Independent,
        generator: torch.Generator,
        z0: Tensor | None = None,
    ) -> Tensor:
        """log p(x) per datapoint, Tensor[B] in nats; works under torch.inference_mode too."""
        with torch.inference_mode(False):
            x = x.clone()  # a tensor made under inference mode cannot be saved for backward
            z0 = None if z0 is None else z0.clone()
            start = posterior_start(x, decode, prior, self.candidates, generator, z0)

            def log_joint(z: Tensor) -> Tensor:
                return prior.log_prob(z) + decode(z).log_prob(x)

            return appendix_d_log_likelihood(
                log_joint,
                start,
                num_samples=self.num_samples,
                burn_in=self.burn_in,
                leapfrog_steps=self.leapfrog_steps,
                target_accept=self.target_accept,
                thin=self.thin,
                generator=generator,
            )
