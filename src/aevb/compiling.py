"""`compile.mode`: train through `torch.compile` of the loss (issue 20, goal 5).

The compiled function is the VAE's `elbo_terms` (encoder, reparameterised draw, decoder,
log-density, KL), called by training steps only; validation, test and every evaluation stay
eager (and in full float32, `aevb.numerics`). `mode="reduce-overhead"` captures the compiled
forward and backward in CUDA graphs on a GPU, which the training step allows: data live on the
device, epoch sums stay there, and the divergence guard reads its flag once per 100 steps on an
accelerator. The optimiser step (fused Adam/Adagrad: a few kernels) stays eager. On a CPU every
mode compiles with Inductor's C++ code generation (tens of seconds) and runs without graphs;
`compile.backend=aot_eager` traces without generating code (what the CPU tests use).

Compiled kernels round differently from eager ones and Inductor draws its own random numbers,
so a compiled run's numbers are not bit-identical to an eager run's; resumes of a compiled run
are exact as long as they compile the same way. This module imports no torch until it compiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aevb.errors import ConfigError
from aevb.registry import COMPILE_MODES


def compile_settings(cfg: Mapping[str, Any]) -> tuple[str | None, str]:
    """Validated (mode, backend) of the `compile` node (absent, as in older configs: eager)."""
    node = cfg.get("compile") or {}
    mode, backend = node.get("mode"), node.get("backend", "inductor")
    if mode not in COMPILE_MODES:
        raise ConfigError("compile.mode", f"null (eager) or one of {COMPILE_MODES[1:]}", mode)
    if not (isinstance(backend, str) and backend):
        raise ConfigError("compile.backend", "a torch.compile backend name (inductor)", backend)
    if mode is not None and cfg.get("model", {}).get("algorithm", "aevb") != "aevb":
        raise ConfigError("compile.mode", "null with model.algorithm other than aevb", mode)
    return mode, backend


def compile_training(model: Any, mode: str | None, backend: str = "inductor") -> None:
    """Make `model` (a VAE) train through torch.compile(mode, backend) of its `elbo_terms`."""
    if mode is None:
        return
    import torch

    model.compiled_terms = torch.compile(model.elbo_terms, mode=mode, backend=backend)
