"""The VAE as a LightningModule: encoder -> q(z|x), decoder -> p(x|z), N(0, I) prior.

The objective is `aevb.metrics.elbo`; the prior, decoder, likelihood and optimiser come from
`aevb.latent_model.LatentVariableModel`. Logs `{train,val,test}/{elbo,recon,kl,loss}` in nats
per datapoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from aevb import lr_schedules, metrics
from aevb.distributed import RankStreams
from aevb.epoch_metrics import ELBOSums, EvaluationSettings, TestSums
from aevb.latent_model import LatentVariableModel
from aevb.numerics import full_precision
from aevb.rng import KeyedNormal, forked_streams, mix_seed
from aevb.step_groups import StepGroup, run_steps

#: seed of validation's z draws: every validation (and the sanity check) runs on streams forked
#: from training's and set to mix_seed(VAL_SEED, rank), so it never moves the training noise (a
#: run stopped before an epoch's validation resumes to the same weights) and every epoch's
#: val/elbo uses the same noise (common random numbers across epochs)
VAL_SEED = 0x5EED_0A1
#: seed of the test's z draws, forked the same way: test metrics are a function of the weights
#: and the test set alone, so a run resumed after its fit ended (requeued while testing, or on
#: its epoch's last batch) reports what the uninterrupted run reported
TEST_SEED = 0x5EED_7E5


def prior_quantiles(steps: int) -> Tensor:
    """`steps` values of z ~ N(0, 1) at the evenly spaced quantiles (i + 0.5) / steps."""
    u = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    return Normal(0.0, 1.0).icdf(u)


def manifold_grid(steps: int) -> Tensor:
    """The [steps * steps, 2] codes of the learned-manifold image (the paper's Fig. 4),
    z = Phi^-1(u) on a regular grid of the unit square, row by row: columns z_1 increasing,
    rows z_2 decreasing (so z_2 points up, as on a plot)."""
    values = prior_quantiles(steps)
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")
    return torch.stack([z1, z2], dim=-1).reshape(-1, 2)


class VAE(RankStreams, LatentVariableModel):
    """Variational autoencoder trained by maximising the SGVB estimate of the ELBO.

    Args:
        data_shape: image shape [C, H, W].
        latent_dim: dimensionality D of z.
        hidden_dims: encoder hidden widths; the decoder mirrors them.
        activation: hidden nonlinearity (see `aevb.registry.ACTIVATIONS`).
        architecture: network family (see `aevb.registry.ARCHITECTURES`).
        likelihood: `{"name": ..., **kwargs}` for `aevb.likelihoods.build_likelihood`.
        beta: weight of the KL term in the training loss (1 = the ELBO).
        samples: L, Monte Carlo samples of z per datapoint.
        kl: "analytic" (estimator B) or "mc" (estimator A).
        init_std: if set, draw all parameters from N(0, init_std^2) (the paper uses 0.01).
        channels: conv feature maps per stride-2 layer (architecture "conv").
        kl_warmup_steps: ramp the KL weight linearly from 0 to beta over this many steps (0: off).
        kl_cycle_steps: if > 0, restart the ramp every this many steps (cyclical annealing,
            Fu et al. 2019); needs kl_warmup_steps <= kl_cycle_steps.
        free_bits: per-dimension KL floor lambda in nats (Kingma et al. 2016): the loss uses
            sum_d max(lambda, batch-mean KL_d); 0 turns it off. */elbo is unaffected.
        optim: `{"name": adam|adagrad|sgd, "lr": ..., "weight_decay": ..., **kwargs}`.
        lr_schedule: `{"name", "interval", **keys}` for `aevb.lr_schedules`; None: constant lr.
        evaluation: what test epochs compute beside the ELBO (default: active units only); not
            a hyperparameter (not saved), so `load_from_checkpoint(..., evaluation=...)` sets it.

    Test metrics are logged as `test/<name>`; `testing_as("test_final")` renames them for a pass.
    Every rank's training noise is saved in checkpoints and restored on resume (`RankStreams`).
    """

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 20,
        hidden_dims: Sequence[int] = (400,),
        activation: str = "relu",
        architecture: str = "mlp",
        likelihood: dict[str, Any] | None = None,
        beta: float = 1.0,
        samples: int = 1,
        kl: str = "analytic",
        init_std: float | None = None,
        channels: Sequence[int] = (32, 64),
        kl_warmup_steps: int = 0,
        kl_cycle_steps: int = 0,
        free_bits: float = 0.0,
        optim: dict[str, Any] | None = None,
        lr_schedule: dict[str, Any] | None = None,
        evaluation: EvaluationSettings | Mapping[str, Any] | None = None,
    ) -> None:
        net = (data_shape, latent_dim, hidden_dims, activation, architecture, likelihood)
        super().__init__(*net, init_std, channels)
        self.save_hyperparameters(ignore=["evaluation"])
        if isinstance(evaluation, Mapping):  # as the config passes it (no torch in aevb.config)
            evaluation = EvaluationSettings(**evaluation)
        self.evaluation = evaluation or EvaluationSettings()
        #: the running epoch's sums per stage (train, val, test): `_epoch`, `_log_means`
        self._epoch_sums: dict[str, ELBOSums] = {}

    # ----- public probabilistic API (prior, decode, decode_mean, sample: LatentVariableModel) --
    #: training's torch.compile of `elbo_terms` (`compile.mode`, aevb.compiling); None: eager
    compiled_terms: Callable[[Tensor], metrics.ELBOTerms] | None = None

    def encode(self, x: Tensor) -> Independent:
        """q(z|x): diagonal Gaussian, batch shape [B], event shape [latent_dim]."""
        mean, logvar = self.encoder(x)
        return metrics.diagonal_gaussian(mean, logvar)

    def elbo_terms(self, x: Tensor, samples: int | None = None) -> metrics.ELBOTerms:
        """recon, KL and per-dimension KL of the bound for a batch (nats per datapoint)."""
        samples, kl = samples or self.hparams.samples, self.hparams.kl
        return metrics.elbo(x, self.encode(x), self.decode, self.prior, samples=samples, kl=kl)

    def elbo(self, x: Tensor, samples: int | None = None) -> Tensor:
        """ELBO(x) per datapoint, Tensor[B] in nats (beta = 1 regardless of training beta)."""
        return self.elbo_terms(x, samples).elbo

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at the posterior mean z = E_q[z|x]: Tensor[B, C, H, W]."""
        return self.decode_mean(self.encode(x).mean)

    @torch.inference_mode()
    def log_likelihood(
        self, x: Tensor, k: int, chunk: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Importance-sampled log p(x) with k draws from q(z|x) (Burda et al.): Tensor[B], nats."""
        q = self.encode(x)
        log_w = metrics.importance_log_weights(x, q, self.decode, self.prior, k, chunk, generator)
        return metrics.iwae_bound(log_w)

    # ----- Lightning ----------------------------------------------------------------------
    def beta_at(self, step: int) -> float:
        """The KL weight at optimisation step `step`: beta, ramped up by the warm-up schedule."""
        hp = self.hparams
        warmup, cycle = hp.kl_warmup_steps, hp.kl_cycle_steps
        if warmup <= 0:
            return float(hp.beta)
        t = step % cycle if cycle > 0 else step
        return float(hp.beta) * min(1.0, t / warmup)

    def loss(self, terms: metrics.ELBOTerms, beta: float | None = None) -> Tensor:
        """The minimised objective -(recon - beta * KL), averaged over the batch (nats).

        With free bits lambda > 0 the KL term is sum_d max(lambda, mean_batch KL_d).
        """
        beta = self.hparams.beta if beta is None else beta
        if self.hparams.free_bits > 0:
            kl = terms.kl_per_dim.mean(0).clamp(min=self.hparams.free_bits).sum()
        else:
            kl = terms.kl.mean()
        return beta * kl - terms.recon.mean()

    def _step(self, batch: tuple[Tensor, ...], stage: str) -> Tensor:
        compiled = stage == "train" and self.compiled_terms is not None  # aevb.compiling
        terms = (self.compiled_terms if compiled else self.elbo_terms)(batch[0])
        loss = self.loss(terms, self.beta_at(self.global_step) if stage == "train" else None)
        if stage == "train":  # read by aevb.divergence.DivergenceGuard before the update
            self.last_terms = {"recon": terms.recon.detach(), "kl": terms.kl.detach()}
        self._epoch(stage).add(terms, loss)
        return loss

    def _epoch(self, stage: str) -> ELBOSums:
        """The running epoch's sums of `stage`, begun at its first batch (a run resumed mid-epoch
        starts there, without on_train_epoch_start) and ended by `_log_means`."""
        if stage not in self._epoch_sums:
            self._epoch_sums[stage] = ELBOSums(per_dim=stage == "val")
        return self._epoch_sums[stage]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        if isinstance(batch, StepGroup):  # steps_per_call > 1: one step per batch of the group
            return run_steps(self, batch, batch_idx, self.train_batch)
        return self.train_batch(batch, batch_idx)

    def train_batch(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """The loss of one training batch (one optimisation step); subclasses with another
        objective (wake-sleep) override this, and step groups come with it."""
        self.count_samples(batch[0].shape[0])
        if self.hparams.kl_warmup_steps > 0 and batch_idx % self.trainer.log_every_n_steps == 0:
            self._log_direct({"train/beta": self.beta_at(self.global_step)})
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        with full_precision():  # evaluation in IEEE float32, no TF32 (aevb.numerics)
            self._step(batch, "test")
            x, sums = batch[0], self._test_sums
            # rows in the test split (aevb.data.TensorLoader with_index), else this rank's count
            rows = batch[2] if len(batch) > 2 else torch.arange(sums.seen, sums.seen + len(x))
            self.add_test_metrics(x, rows, sums)

    def add_test_metrics(self, x: Tensor, rows: Tensor, sums: TestSums) -> None:
        """Add a batch's posterior statistics and (`iw_samples` > 0) importance-weighted bounds
        to `sums`. The importance samples of image i are keyed by (seed, rows[i]): the same on
        every device and for any number of ranks (`aevb.rng.KeyedNormal`)."""
        spec, posterior = sums.settings, self.encode(x)
        log_w = None
        if spec.iw_samples > 0:
            noise = KeyedNormal(spec.seed, rows.cpu(), self.hparams.latent_dim)
            log_w = metrics.importance_log_weights(
                x, posterior, self.decode, self.prior, spec.iw_samples, spec.chunk, noise=noise
            )
        sums.add(posterior.mean, metrics.kl_per_dim(posterior, self.prior), log_w)

    def on_validation_epoch_start(self) -> None:
        self._eval_streams = ExitStack()  # closed (training streams restored) at the epoch end
        seed = mix_seed(VAL_SEED, self.global_rank)
        self._eval_streams.enter_context(forked_streams(seed, self.device))

    def on_test_epoch_start(self) -> None:
        self._test_sums = TestSums(self.evaluation)
        self._eval_streams = ExitStack()
        seed = mix_seed(TEST_SEED, self.global_rank)
        self._eval_streams.enter_context(forked_streams(seed, self.device))

    def on_train_epoch_end(self) -> None:
        self._log_means("train")

    def on_validation_epoch_end(self) -> None:
        self._eval_streams.close()
        values = self._log_means("val")
        if values is not None and not self.trainer.sanity_checking:
            val_elbo = values[lr_schedules.PLATEAU_MONITOR]
            lr_schedules.step_plateau(self.trainer.lr_scheduler_configs, val_elbo)

    def on_test_epoch_end(self) -> None:
        self._eval_streams.close()
        self._log_means("test")
        result = self._test_sums.result(self._reduce)
        if result is not None:
            values = {f"{self.test_prefix}/{k}": v for k, v in result.values.items()}
            self.log_dict(values, on_step=False, on_epoch=True, sync_dist=False)
            self.test_latent_stats = {"kl_per_dim": result.kl_per_dim, "activity": result.activity}

    def _reduce(self, t: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(t, reduce_op="sum")  # over all ranks (DDP)

    def _log_means(self, stage: str) -> dict[str, Tensor] | None:
        """Log the epoch means of `stage` as `{prefix}/{elbo,recon,kl,loss}`; validation also logs
        the per-dimension KL: `val/kl_active_dims` and the histogram `val/kl_per_dim`."""
        sums = self._epoch_sums.pop(stage, None)
        means = sums.means(self._reduce) if sums is not None else None
        if means is None:
            return None
        prefix = self.test_prefix if stage == "test" else stage
        kl_dims = means.pop("kl_per_dim", None)
        if kl_dims is not None:
            self.log(f"{prefix}/kl_active_dims", (kl_dims > 0.01).sum().float(), sync_dist=False)
            if self.trainer.is_global_zero and not self.trainer.sanity_checking:
                for logger in self.loggers:
                    writer = getattr(logger, "experiment", None)
                    if hasattr(writer, "add_histogram"):
                        writer.add_histogram("val/kl_per_dim", kl_dims.cpu(), self.global_step)
        values = {f"{prefix}/{k}": v for k, v in means.items()}
        if self.automatic_optimization:
            self.log_dict(values, on_step=False, on_epoch=True, sync_dist=False)  # already reduced
            return values
        # steps_per_call > 1: Lightning counts its own steps, so the x of the points is explicit.
        # Lightning logs the epoch's train and (epoch-end) val means at its step count before the
        # epoch's last step is added: one back
        step = self.global_step - (stage in ("train", "val"))
        at = {"epoch": float(self.current_epoch)}
        if stage == "train":  # read by nothing but the loggers: straight to them (Lightning's
            # result collection costs ~0.5 ms per epoch, which Frey Face pays every 17 steps)
            self._log_direct({**values, **at}, step=step)
            return values
        self.log_dict({**values, **at, "step": float(step)}, on_step=False, on_epoch=True)
        return values
