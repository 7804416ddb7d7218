"""Shared pieces of the benchmarks: a hand-written VAE, matmul-rate probe, peak RSS, tables."""

from __future__ import annotations

import resource
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HandVAE(nn.Module):
    """An MLP VAE written out by hand: D-H-2Z encoder, Z-H-(P*D) decoder, analytic KL."""

    def __init__(self, dims: int, hidden: int, latent: int, act: str, gaussian: bool) -> None:
        super().__init__()
        self.act = {"tanh": torch.tanh, "relu": F.relu}[act]
        self.gaussian = gaussian
        self.enc1, self.enc2 = nn.Linear(dims, hidden), nn.Linear(hidden, 2 * latent)
        self.dec1 = nn.Linear(latent, hidden)
        self.dec2 = nn.Linear(hidden, (2 if gaussian else 1) * dims)

    def loss(self, x: Tensor) -> Tensor:
        """-ELBO per datapoint (estimator B, one z per datapoint), nats."""
        mu, logvar = self.enc2(self.act(self.enc1(x))).chunk(2, -1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        out = self.dec2(self.act(self.dec1(z)))
        if self.gaussian:
            mean, log_var = out.chunk(2, -1)
            mean = torch.sigmoid(mean)
            nll = 0.5 * (log_var + (x - mean).pow(2) * torch.exp(-log_var) + 1.8378770664093453)
            nll = nll.sum()
        else:
            nll = F.binary_cross_entropy_with_logits(out, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (nll + kl) / x.shape[0]


def matmul_rate(batch: int, layers: list[tuple[int, int]], seconds: float = 1.0) -> float:
    """Measured float32 FLOP/s of exactly the GEMMs of one MLP training step.

    For every Linear(n_in, n_out) on a batch: forward X @ W^T, backward dY @ W and dY^T @ X,
    i.e. 6 * n_in * n_out * batch FLOP; best of 3 timed bursts.
    """
    mats = [(torch.randn(batch, i), torch.randn(o, i), torch.randn(batch, o)) for i, o in layers]
    flop = sum(6 * i * o * batch for i, o in layers)

    def step() -> None:
        for x, w, dy in mats:
            x @ w.T
            dy @ w
            dy.T @ x

    for _ in range(10):
        step()
    best = 0.0
    for _ in range(3):
        reps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            for _ in range(10):
                step()
            reps += 10
        best = max(best, flop * reps / elapsed)
    return best


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(rows: list[dict[str, object]], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
