"""The model every algorithm fits: p(z) = N(0, I), p_theta(x|z) = likelihood(decoder(z)).

`LatentVariableModel` is the LightningModule base of `aevb.vae.VAE` (and so of
`aevb.wake_sleep.WakeSleep`) and of `aevb.mcem.MonteCarloEM`. It builds the likelihood and the
networks from the `model.*` keys and holds what they all do with them: decode, E[x|z], samples
from p(x), the count of training samples, the optimiser and LR schedule, and the check of the
data against the likelihood's support. The algorithms add their objective and their steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from aevb import lr_schedules
from aevb.epoch_metrics import TestPrefix
from aevb.likelihoods import build_likelihood
from aevb.networks import NetworkSpec, build_networks, init_normal_
from aevb.registry import OPTIMIZERS
from aevb.step_groups import StepGroup


class LatentVariableModel(TestPrefix, L.LightningModule):
    """Prior, decoder and likelihood, built from the `model.*` keys (see `aevb.vae.VAE`).

    With `encoder=False` only the decoder is kept (the architecture builds both, so the
    decoder's initial weights are the same either way). Subclasses call
    `save_hyperparameters()` in their own `__init__`: their arguments are the hparams, which
    must include `latent_dim` and `optim` (and may include `lr_schedule`).
    """

    #: the optimiser when `hparams.optim` is None
    default_optim: dict[str, Any] = {"name": "adam", "lr": 1e-3}

    def __init__(
        self,
        data_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int],
        activation: str,
        architecture: str,
        likelihood: dict[str, Any] | None,
        init_std: float | None,
        channels: Sequence[int],
        encoder: bool = True,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        lik = dict(likelihood or {"name": "bernoulli"})
        self.likelihood = build_likelihood(lik.pop("name"), self.data_shape, **lik)
        out = self.likelihood.params_per_pixel
        spec = NetworkSpec(self.data_shape, latent_dim, hidden_dims, activation, out, channels)
        encoder_net, decoder_net = build_networks(architecture, spec)
        if encoder:  # registered before the decoder: the order of parameters in optimiser states
            self.encoder = encoder_net
        self.decoder = decoder_net
        if init_std is not None:
            init_normal_(self, init_std)
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(latent_dim), persistent=False)
        #: training datapoints processed so far, over all ranks (saved in checkpoints)
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))
        #: the same count as a Python int, read by callbacks every step without a device sync
        self.samples_seen_host = 0

    # ----- the generative model -----------------------------------------------------------
    @property
    def prior(self) -> Independent:
        """p(z) = N(0, I), event shape [latent_dim]."""
        return Independent(Normal(self.prior_loc, self.prior_scale, validate_args=False), 1)

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z): batch shape [N], event shape = image shape, so log_prob(x) is [N]."""
        return self.likelihood(self.decoder(z))

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z] images for codes z [N, D] (moved to the model's device): Tensor[N, C, H, W]."""
        return self.likelihood.mean(self.decoder(z.to(self.prior_loc.device)))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images E[x|z] with z ~ p(z): Tensor[n, C, H, W] (z drawn on the generator's device,
        e.g. a CPU generator for the same images on any device)."""
        where = generator.device if generator is not None else self.prior_loc.device
        z = torch.randn(n, self.hparams.latent_dim, generator=generator, device=where)
        return self.decode_mean(z)

    # ----- bookkeeping shared by the algorithms --------------------------------------------
    def count_samples(self, n: int) -> None:
        """Add a step's n datapoints per rank to `samples_seen` (all ranks: n x world size; each
        rank's shard has the same length, so every step trains n on every rank)."""
        n *= self.trainer.world_size
        self.samples_seen += n
        self.samples_seen_host += n

    def _log_direct(self, values: Mapping[str, float | Tensor], step: int | None = None) -> None:
        """Write scalars straight to the loggers at `step` (default: the current one; rank 0; no
        Lightning result-collection bookkeeping, so cheap enough for step-level curves)."""
        if self.trainer.is_global_zero:
            scalars = {k: v.item() if isinstance(v, Tensor) else v for k, v in values.items()}
            for logger in self.loggers:
                logger.log_metrics(scalars, step=self.global_step if step is None else step)

    def on_train_start(self) -> None:
        self.samples_seen_host = int(self.samples_seen)  # one sync, after a resume's load

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        first = getattr(dm, "val_images", None)
        if first is not None:
            self.likelihood.check_data(first[:1000])

    # ----- optimiser and LR schedule --------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        cfg = dict(self.hparams.optim or self.default_optim)
        name = cfg.pop("name")
        optimizer = OPTIMIZERS[name](self.parameters(), **cfg)
        spec = self.hparams.get("lr_schedule")  # absent: MCEM, checkpoints older than schedules
        if not spec or spec["name"] == "none":
            return optimizer
        scheduler = lr_schedules.lightning_scheduler(optimizer, spec, self.trainer)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if not lr_schedules.is_plateau(scheduler):  # plateau: stepped after validation (VAE)
            super().lr_scheduler_step(scheduler, metric)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, StepGroup):  # a group logs per optimiser step (run_steps)
            self.log_lr(batch_idx)

    def log_lr(self, batch_idx: int) -> None:
        """Log the scheduled learning rate of the step about to be taken as `train/lr` (constant
        lr: not logged); batch_idx is the batch's index in the epoch."""
        if self.trainer.lr_scheduler_configs and batch_idx % self.trainer.log_every_n_steps == 0:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self._log_direct({lr_schedules.LR_TAG: lr})
