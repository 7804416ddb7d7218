"""Floating-point policy, the same in aevb-train and aevb-eval.

- Training matmuls and convolutions may use TF32 on CUDA (`configure_numerics`); no effect on
  the CPU.
- Every evaluation (test metrics, aevb-eval, learning-curve points) runs in IEEE float32
  (`full_precision`), and sums over a test set are float64 (`wide_dtype`; float32 on Apple MPS,
  which has no float64).
- Subnormal floats are flushed to zero (x86 CPUs are ~100x slower on them).

Pure torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def wide_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype of sums over a test set: float64, except on Apple MPS, which has none."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def configure_numerics() -> None:
    """The process-wide numerics of aevb-train and aevb-eval (see the module docstring)."""
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA; no effect on CPU
    # Adam's second moments of weights that see only zero pixels decay into subnormal floats;
    # x86 CPUs compute those ~100x slower. Flushing them to zero changes nothing above 1e-38;
    # it must precede the first parallel op (worker threads inherit the mode when they start).
    torch.set_flush_denormal(True)


@contextmanager
def full_precision() -> Iterator[None]:
    """IEEE float32 matmuls and convolutions (no TF32) inside the block, restored after."""
    matmul = torch.get_float32_matmul_precision()
    conv = torch.backends.cudnn.conv.fp32_precision
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.conv.fp32_precision = conv
