"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2013).

Built on PyTorch Lightning, Hydra and TensorBoard. `aevb.VAE`, `aevb.Run` and `aevb.load_run`
are imported on first use, so that light modules (`aevb.config`, `aevb.registry`) load without
torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names, for type checkers and editors
    from aevb.runs import Run, load_run
    from aevb.vae import VAE

__all__ = ["VAE", "Run", "load_run"]
__version__ = "0.1.0"

_LAZY = {"VAE": "aevb.vae", "Run": "aevb.runs", "load_run": "aevb.runs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aevb' has no attribute {name!r}")
