"""Epoch means of the logged metrics, summed batch by batch on the device. Pure torch.

Each batch adds its sums to tensors on the device (no host sync and no logging per step); at the
epoch's end the caller's `reduce` sums them over ranks (DDP: the strategy's all-reduce; one
process: the identity), so every mean is the exact mean over every datapoint of every rank,
whatever the batch sizes.

- `ELBOSums`: `{elbo, recon, kl, loss}` of one phase (train, val or test) and, optionally, the
  KL of each latent dimension.
- `TestSums`: what a test epoch adds (`EvaluationSettings`): the importance-weighted log p(x)
  and IWAE bounds, and the posterior moments behind active units, in `numerics.wide_dtype`.
- `TestPrefix`: the name test metrics are logged under (`test/`, or `test_final/` for one pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from aevb import metrics
from aevb.metrics import ELBOTerms
from aevb.numerics import wide_dtype

#: per-datapoint quantities logged as `{train,val,test}/<name>` (epoch means, nats)
LOGGED_TERMS = ("elbo", "recon", "kl", "loss")

#: sums a tensor over ranks (the identity on one process)
Reduce = Callable[[Tensor], Tensor]


def local(t: Tensor) -> Tensor:
    """The `Reduce` of a single process."""
    return t


class TestPrefix:
    """Mixin of the algorithms: test epochs log `{test_prefix}/<name>`, "test" unless renamed
    for one pass by `testing_as` (aevb-train tests the final weights as `test_final/`)."""

    __test__ = False  # not a pytest class
    test_prefix: str = "test"

    @contextmanager
    def testing_as(self, prefix: str) -> Iterator[None]:
        """Inside, test epochs log their metrics as `{prefix}/<name>`."""
        saved, self.test_prefix = self.test_prefix, prefix
        try:
            yield
        finally:
            self.test_prefix = saved


@dataclass(frozen=True)
class EvaluationSettings:
    """What a test epoch computes beside the ELBO (a constructor argument of `aevb.vae.VAE`).

    iw_samples: k of `test/nll` (0 = no importance-weighted metrics); iwae_ks: the k of the
    `test/iwae_k{K}` bounds (each <= iw_samples, sharing its draws); chunk: decoder rows per
    pass; seed: of the importance samples; active_threshold: of `test/active_units`.
    """

    iw_samples: int = 0
    iwae_ks: tuple[int, ...] = ()
    chunk: int | None = None
    seed: int = 0
    active_threshold: float = 0.01


class ELBOSums:
    """One epoch's sums of a phase's `LOGGED_TERMS` (in their dtype) and datapoint count.

    With `per_dim`, also the sum of each latent dimension's KL (`kl_per_dim`).
    """

    def __init__(self, per_dim: bool = False) -> None:
        self.per_dim = per_dim
        self._sums: Tensor | None = None  # [elbo, recon, kl, loss * n, n]
        self._kl_dims: Tensor | None = None  # [D]

    def add(self, terms: ELBOTerms, loss: Tensor) -> None:
        """Add a batch: its per-datapoint `terms` and the batch-mean `loss` (detached)."""
        n = terms.elbo.shape[0]
        count = loss.new_full((), n)  # a fill on the device, not a host-to-device copy
        stacked = [terms.elbo.sum(), terms.recon.sum(), terms.kl.sum(), loss * n, count]
        values = torch.stack(stacked).detach()
        if self._sums is None:
            self._sums = values
        else:
            self._sums += values
        if self.per_dim:
            kl_dims = terms.kl_per_dim.detach().sum(0)
            self._kl_dims = kl_dims if self._kl_dims is None else self._kl_dims + kl_dims

    def means(self, reduce: Reduce = local) -> dict[str, Tensor] | None:
        """`{name: mean}` over every datapoint added on every rank (0-d tensors), or None if no
        batch was added; with `per_dim` also `"kl_per_dim"` ([D]). Collective if `reduce` is."""
        if self._sums is None:
            return None
        sums = reduce(self._sums)
        out = dict(zip(LOGGED_TERMS, sums[:-1] / sums[-1], strict=True))
        if self._kl_dims is not None:
            out["kl_per_dim"] = reduce(self._kl_dims) / sums[-1]
        return out


@dataclass(frozen=True)
class TestResult:
    """A test epoch's metrics beside the ELBO, and per-dimension latent statistics."""

    __test__ = False  # not a pytest class

    values: dict[str, float]  #: active_units, and nll, iwae_k{K} if importance-sampled
    kl_per_dim: list[float]  #: mean analytic KL(q(z_u|x) || p(z_u)) per dimension u
    activity: list[float]  #: Cov_x(E_q[z_u|x]) per dimension u


class TestSums:
    """One test epoch's sums of log p(x), the IWAE bounds and the posterior moments (in
    `wide_dtype`), and `seen`, this rank's images so far."""

    __test__ = False  # not a pytest class

    def __init__(self, settings: EvaluationSettings) -> None:
        self.settings = settings
        self.seen = 0
        self.totals: dict[str, Tensor] = {}

    def add(self, posterior_mean: Tensor, kl_per_dim: Tensor, log_w: Tensor | None) -> None:
        """Add a batch: posterior means [B, D], per-dimension KL [B, D] and, if
        `settings.iw_samples` > 0, the importance log-weights [k, B] of `metrics`."""
        wide = wide_dtype(posterior_mean.device)
        mean = posterior_mean.to(wide)
        sums = {
            "n": mean.new_full((), mean.shape[0]),
            "mean": mean.sum(0),
            "mean_sq": (mean**2).sum(0),
            "kl": kl_per_dim.to(wide).sum(0),
        }
        if log_w is not None:
            sums["log_px"] = metrics.iwae_bound(log_w).sum()
            for k in self.settings.iwae_ks:
                sums[f"iwae_k{k}"] = metrics.iwae_bound(log_w, k).sum()
        for key, value in sums.items():
            self.totals[key] = self.totals[key] + value if key in self.totals else value
        self.seen += mean.shape[0]

    def result(self, reduce: Reduce = local) -> TestResult | None:
        """Means over every image of every rank, or None if no batch was added. Collective if
        `reduce` is."""
        if not self.totals:
            return None
        acc = {k: reduce(v) for k, v in self.totals.items()}
        n = acc["n"]
        activity = metrics.latent_activity_from_moments(n, acc["mean"], acc["mean_sq"])
        units = metrics.active_units(activity, self.settings.active_threshold)
        values = {"active_units": float(units)}
        if "log_px" in acc:
            values["nll"] = float(-acc["log_px"] / n)
            for k in self.settings.iwae_ks:
                values[f"iwae_k{k}"] = float(acc[f"iwae_k{k}"] / n)
        return TestResult(values, (acc["kl"] / n).tolist(), activity.tolist())
