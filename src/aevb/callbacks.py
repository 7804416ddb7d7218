"""TensorBoard callbacks: image grids every N epochs and the end-of-run HParams record.

Each image callback logs one tag at the end of every `every_n_epochs`-th training epoch (after
validation) and once more at the end of fit, on rank 0 only, to the run's TensorBoardLogger
(none: nothing is logged). Images are decoder means E[x|z] (`VAE.likelihood.mean`), gridded with
torchvision's `make_grid`. They use only the model's public API and the datamodule's tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid

from aevb import metrics
from aevb.hparams import experiment_summary, session_summaries
from aevb.vae import manifold_grid, prior_quantiles


def tensorboard_writer(trainer: L.Trainer) -> Any | None:
    """The SummaryWriter of the trainer's first TensorBoardLogger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def _grid(images: Tensor, nrow: int) -> Tensor:
    """[N, C, H, W] images (clamped to [0, 1]) -> one [3, H', W'] grid on the CPU."""
    return make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1)


def _eval_images(datamodule: Any) -> tuple[Tensor, Tensor]:
    """Validation images and labels (training images when there is no validation split)."""
    images = getattr(datamodule, "val_images", None)
    if images is None or len(images) == 0:
        return datamodule.train_images, datamodule.train_labels
    return images, datamodule.val_labels


class ImageCallback(L.Callback):
    """Base class: calls `image(pl_module, datamodule)` every N epochs and logs it under `tag`."""

    tag = "images"

    def __init__(self, every_n_epochs: int = 5) -> None:
        if not (isinstance(every_n_epochs, int) and every_n_epochs >= 1):
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self._last_step: int | None = None

    def image(self, pl_module: L.LightningModule, datamodule: Any) -> Tensor:
        """The [3, H, W] image in [0, 1] to log."""
        raise NotImplementedError

    def applies_to(self, pl_module: L.LightningModule) -> bool:
        """Whether the model has what the image needs (MCEM has no encoder)."""
        return not self.needs_encoder or hasattr(pl_module, "encoder")

    #: the image uses q(z|x) (skipped for models without an encoder)
    needs_encoder = False

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if not self.applies_to(pl_module):
            return
        if self._last_step == trainer.global_step:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                img = self.image(pl_module, trainer.datamodule)
        finally:
            pl_module.train(was_training)
        writer.add_image(self.tag, img, global_step=trainer.global_step)
        self._last_step = trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)  # the final model, unless its epoch was just logged


class Reconstructions(ImageCallback):
    """A fixed set of validation images (top row) above their reconstructions E[x|z=E_q[z|x]]."""

    tag = "images/reconstructions"
    needs_encoder = True

    def __init__(self, every_n_epochs: int = 5, num_images: int = 8) -> None:
        super().__init__(every_n_epochs)
        self.num_images = num_images

    def image(self, pl_module: L.LightningModule, datamodule: Any) -> Tensor:
        x = _eval_images(datamodule)[0][: self.num_images].to(pl_module.device)
        return _grid(torch.cat([x, pl_module.reconstruct(x)]), nrow=len(x))


class PriorSamples(ImageCallback):
    """Decoder means at z ~ p(z) from a fixed noise seed, so frames compare across epochs."""

    tag = "images/samples"

    def __init__(self, every_n_epochs: int = 5, num_samples: int = 64, seed: int = 0) -> None:
        super().__init__(every_n_epochs)
        self.num_samples, self.seed = num_samples, seed

    def image(self, pl_module: L.LightningModule, datamodule: Any) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self.num_samples, pl_module.hparams.latent_dim, generator=g)
        return _grid(pl_module.decode_mean(z), nrow=int(np.ceil(np.sqrt(self.num_samples))))


class LatentManifold(ImageCallback):
    """latent_dim = 2: the learned manifold (the paper's Fig. 4): a grid of evenly spaced points
    on the unit square mapped through the inverse Gaussian CDF, decoded. latent_dim != 2:
    traversals of the `num_dims` most active dimensions (rows; others held at 0, the prior mean).
    """

    tag = "images/latent_manifold"

    def __init__(
        self, every_n_epochs: int = 5, steps: int = 15, num_dims: int = 8, num_points: int = 1000
    ) -> None:
        super().__init__(every_n_epochs)
        self.steps, self.num_dims, self.num_points = steps, num_dims, num_points

    def applies_to(self, pl_module: L.LightningModule) -> bool:
        return pl_module.hparams.latent_dim == 2 or hasattr(pl_module, "encoder")

    def latent_codes(self, pl_module: L.LightningModule, datamodule: Any) -> Tensor:
        """The [rows * steps, D] codes decoded into the grid (rows = steps for D = 2)."""
        dim = pl_module.hparams.latent_dim
        if dim == 2:
            return manifold_grid(self.steps)
        values = prior_quantiles(self.steps)
        x = _eval_images(datamodule)[0][: self.num_points].to(pl_module.device)
        activity = metrics.latent_activity(pl_module.encode(x).mean)
        dims = activity.argsort(descending=True)[: self.num_dims].cpu()
        z = torch.zeros(len(dims), self.steps, dim)
        for row, d in enumerate(dims):
            z[row, :, d] = values
        return z.reshape(-1, dim)

    def image(self, pl_module: L.LightningModule, datamodule: Any) -> Tensor:
        z = self.latent_codes(pl_module, datamodule)
        return _grid(pl_module.decode_mean(z), nrow=self.steps)


class LatentScatter(ImageCallback):
    """Posterior means E_q[z|x] of validation images coloured by label: the first two latent
    dimensions when latent_dim <= 2, else their projection on the top two principal axes."""

    tag = "images/latent_scatter"
    needs_encoder = True

    def __init__(self, every_n_epochs: int = 5, num_points: int = 2000, size: int = 4) -> None:
        super().__init__(every_n_epochs)
        self.num_points, self.size = num_points, size

    def image(self, pl_module: L.LightningModule, datamodule: Any) -> Tensor:
        images, labels = _eval_images(datamodule)
        x = images[: self.num_points].to(pl_module.device)
        means = pl_module.encode(x).mean.double().cpu()
        labels = labels[: self.num_points].cpu().numpy()
        if means.shape[1] == 1:
            xy, axes = torch.cat([means, torch.zeros_like(means)], 1), ("z_1", "")
        elif means.shape[1] == 2:
            xy, axes = means, ("z_1", "z_2")
        else:
            centred = means - means.mean(0)
            _, _, v = torch.linalg.svd(centred, full_matrices=False)
            xy, axes = centred @ v[:2].T, ("PC 1 of E_q[z|x]", "PC 2 of E_q[z|x]")
        return scatter_image(xy.numpy(), labels, axes, self.size)


def scatter_image(xy: np.ndarray, labels: np.ndarray, axes: Sequence[str], size: int = 4) -> Tensor:
    """A matplotlib scatter of points [N, 2] coloured by integer label -> [3, H, W] in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # late: slow import
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size, size), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=4)
    fig.colorbar(points, ax=ax, ticks=range(10))
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    fig.tight_layout()
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0


@rank_zero_only
def log_hparams(
    loggers: Sequence[Logger],
    params: Mapping[str, Any],
    final: Mapping[str, float],
    step: int | None = None,
    declare: bool = True,
) -> None:
    """Record a run's hyperparameters with its final metrics in the TensorBoard HParams tab.

    `final` (e.g. test/elbo, test/nll, test/active_units) is logged as scalars, which the
    HParams tab reads as the run's metric values; `params` is the run's session (aevb.hparams).
    `declare`: also declare `params` and `final` as the experiment's columns -- a single run;
    in a multirun the sweep's callback declares the swept keys once (`SweepHParams`). Call
    after the last `trainer.test`; rank 0 only.
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.hparams.update(params)  # saved as hparams.yaml by finalize
            logger.log_metrics(dict(final), step=step)
            summaries = session_summaries(params)
            if declare:
                summaries.insert(0, experiment_summary(dict.fromkeys(params), list(final)))
            writer = logger.experiment._get_file_writer()  # as Lightning's log_hyperparams
            for summary in summaries:
                writer.add_summary(summary, step)
            logger.finalize("success")  # flush and close the event file written after testing
