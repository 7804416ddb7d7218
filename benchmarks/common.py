"""Shared pieces of the benchmarks: matmul-rate probe, peak RSS, table printing."""

from __future__ import annotations

import resource
import time

import torch


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
