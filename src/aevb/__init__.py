"""aevb: Auto-Encoding Variational Bayes (Kingma & Welling, 2013).

Built on PyTorch Lightning, Hydra and TensorBoard.
"""

from aevb.runs import Run, load_run
from aevb.vae import VAE

__all__ = ["VAE", "Run", "load_run"]
__version__ = "0.1.0"
