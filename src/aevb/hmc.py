"""Hybrid (Hamiltonian) Monte Carlo over a batch of independent chains, and the AEVB paper's
Appendix D marginal-likelihood estimator built on it. Pure torch: no Lightning, no files.

Chain b targets its own unnormalised density pi_b(z), given as one function
`log_density(z: [B, D]) -> [B]` (for a posterior: log p(z) + log p(x_b|z), whose gradient is the
paper's grad_z log p(z) + grad_z log p(x|z)). Every chain has its own leapfrog step size, tuned
during burn-in by dual averaging (Hoffman & Gelman 2014, Alg. 5) towards a target acceptance
rate (Appendix E: 90 %). Momenta and accept/reject uniforms come from a CPU generator and are
moved to the chains' device, so a seed gives the same chains on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import MultivariateNormal

#: log_density(z [B, D]) -> [B]: one unnormalised log-density per chain
LogDensity = Callable[[Tensor], Tensor]


def value_and_grad(log_density: LogDensity, z: Tensor) -> tuple[Tensor, Tensor]:
    """(log pi(z) [B], grad_z log pi(z) [B, D]), gradients on even inside torch.no_grad()."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        value = log_density(z)
        (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad.detach()


@dataclass
class Chains:
    """The state of B chains: position, its log-density and gradient, step sizes."""

    z: Tensor  #: [B, D]
    log_density: Tensor  #: [B]
    grad: Tensor  #: [B, D]
    step_size: Tensor  #: [B]


@dataclass
class HMCResult:
    """Draws [S, B, D] after burn-in, each chain's acceptance rate over them, the final state."""

    samples: Tensor
    accept_rate: Tensor
    chains: Chains


class HMC:
    """Batched HMC: `leapfrog_steps` steps of size eps_b per proposal, Metropolis accept/reject.

    Args:
        log_density: the target, one value per chain.
        leapfrog_steps: leapfrog steps per proposal (Appendix E: 10 for MCEM, 4 for App. D).
        target_accept: acceptance rate the burn-in tunes the step sizes towards.
        generator: CPU generator of the momenta and uniforms (None: a fresh seed 0 one).
    """

    def __init__(
        self,
        log_density: LogDensity,
        leapfrog_steps: int = 10,
        target_accept: float = 0.9,
        generator: torch.Generator | None = None,
        jitter: float = 0.5,
    ) -> None:
        if not (isinstance(leapfrog_steps, int) and leapfrog_steps >= 1):
            raise ValueError(f"leapfrog_steps must be an integer >= 1, got {leapfrog_steps!r}")
        if not 0 < target_accept < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
        self.log_density = log_density
        self.leapfrog_steps, self.target_accept = leapfrog_steps, target_accept
        self.generator = generator or torch.Generator().manual_seed(0)
        self.jitter = jitter

    def init(self, z0: Tensor, step_size: float | Tensor = 0.1) -> Chains:
        """Chains started at z0 [B, D] with a step size (one for all, or one per chain)."""
        value, grad = value_and_grad(self.log_density, z0)
        eps = torch.as_tensor(step_size, dtype=z0.dtype, device=z0.device).expand(len(z0))
        return Chains(z0.detach(), value, grad, eps.clone())

    def _normal(self, like: Tensor) -> Tensor:
        noise = torch.randn(like.shape, generator=self.generator, dtype=like.dtype)
        return noise.to(like.device)

    def step(self, chains: Chains) -> tuple[Chains, Tensor]:
        """One proposal per chain; returns the new state and the acceptance probabilities [B]."""
        jitter = torch.rand(chains.step_size.shape, generator=self.generator, dtype=chains.z.dtype)
        jitter = 1 + self.jitter * (2 * jitter.to(chains.z.device) - 1)
        eps = (chains.step_size * jitter).unsqueeze(-1)
        p0 = self._normal(chains.z)
        z, value, grad = chains.z, chains.log_density, chains.grad
        p = p0 + 0.5 * eps * grad
        for i in range(self.leapfrog_steps):
            z = z + eps * p
            value, grad = value_and_grad(self.log_density, z)
            p = p + (eps if i < self.leapfrog_steps - 1 else 0.5 * eps) * grad
        h0 = -chains.log_density + 0.5 * (p0**2).sum(-1)
        h1 = -value + 0.5 * (p**2).sum(-1)
        accept_prob = torch.exp(torch.clamp(h0 - h1, max=0.0)).nan_to_num(0.0)
        u = torch.rand(accept_prob.shape, generator=self.generator, dtype=accept_prob.dtype)
        accept = (u.to(accept_prob.device) < accept_prob) & torch.isfinite(value)
        keep = accept.unsqueeze(-1)
        new = Chains(
            torch.where(keep, z, chains.z),
            torch.where(accept, value, chains.log_density),
            torch.where(keep, grad, chains.grad),
            chains.step_size,
        )
        return new, accept_prob

    def burn_in(self, chains: Chains, steps: int) -> Chains:
        """`steps` proposals that tune each chain's step size by dual averaging (gamma = 0.05,
        t0 = 10, kappa = 0.75); the chains keep the averaged step size afterwards."""
        if steps <= 0:
            return chains
        mu = torch.log(10 * chains.step_size)
        h_bar = torch.zeros_like(chains.step_size)
        log_eps_bar = torch.zeros_like(chains.step_size)
        for t in range(1, steps + 1):
            chains, accept_prob = self.step(chains)
            eta = 1.0 / (t + 10)
            h_bar = (1 - eta) * h_bar + eta * (self.target_accept - accept_prob)
            log_eps = mu - math.sqrt(t) / 0.05 * h_bar
            weight = t**-0.75
            log_eps_bar = weight * log_eps + (1 - weight) * log_eps_bar
            chains.step_size = log_eps.exp()
        chains.step_size = log_eps_bar.exp()
        return chains

    def sample(self, chains: Chains, num_samples: int, thin: int = 1) -> HMCResult:
        """`num_samples` draws per chain, every `thin`-th proposal, step sizes fixed."""
        draws, accepted = [], torch.zeros_like(chains.step_size)
        for _ in range(num_samples):
            for _ in range(thin):
                chains, accept_prob = self.step(chains)
                accepted += accept_prob
            draws.append(chains.z)
        rate = accepted / max(num_samples * thin, 1)
        return HMCResult(torch.stack(draws), rate, chains)


def fit_gaussian(samples: Tensor, jitter: float = 1e-6) -> MultivariateNormal:
    """A full-covariance Gaussian per chain fitted to draws [S, B, D] (maximum likelihood)."""
    mean = samples.mean(0)
    centred = samples - mean
    cov = torch.einsum("sbi,sbj->bij", centred, centred) / samples.shape[0]
    eye = torch.eye(samples.shape[-1], dtype=samples.dtype, device=samples.device)
    return MultivariateNormal(mean, covariance_matrix=cov + jitter * eye)


def appendix_d_log_likelihood(
    log_joint: LogDensity,
    z0: Tensor,
    num_samples: int = 50,
    burn_in: int = 100,
    leapfrog_steps: int = 4,
    target_accept: float = 0.9,
    step_size: float = 0.1,
    thin: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """log p(x_b) per chain by the paper's Appendix D estimator, [B] in nats.

    1. HMC draws z^(l) ~ p(z|x) (after `burn_in` tuning proposals, from z0);
    2. a density q(z) fitted to them: a full-covariance Gaussian (the paper leaves it open);
    3. L fresh draws from the same chains and
       p(x) ~= [ (1/L) sum_l q(z^(l)) / (p(z^(l)) p(x|z^(l))) ]^(-1),
    from 1/p(x) = E_p(z|x)[q(z) / p(x, z)]. `log_joint(z) = log p(z) + log p(x_b|z)` per chain.
    1/p-hat is unbiased for 1/p(x) given exact posterior draws, so log p-hat is, by Jensen, a
    stochastic *upper* bound in expectation (importance sampling's is a lower bound). Draws are
    every `thin`-th proposal. Accuracy against known log p(x): docs/evaluation.md.
    """
    hmc = HMC(log_joint, leapfrog_steps, target_accept, generator)
    chains = hmc.burn_in(hmc.init(z0, step_size), burn_in)
    fitted = hmc.sample(chains, num_samples, thin)
    q = fit_gaussian(fitted.samples)
    fresh = hmc.sample(fitted.chains, num_samples, thin).samples  # [L, B, D]
    with torch.no_grad():
        log_ratio = q.log_prob(fresh) - torch.stack([log_joint(z) for z in fresh])
    return math.log(num_samples) - torch.logsumexp(log_ratio, dim=0)
