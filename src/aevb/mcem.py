"""Monte Carlo EM (the AEVB paper's Appendix E baseline in Fig. 3): no encoder; the E-step
samples z ~ p_theta(z|x) by Hybrid Monte Carlo, the M-step takes gradient steps on log p(x, z).

For each minibatch x_1..x_M (one chain per training datapoint, all M chains batched on the
model's device, `aevb.hmc.HMC` targeting log p(z) + log p(x_b|z)):

1. E-step: `proposals` HMC proposals of `leapfrog_steps` leapfrog steps each (Appendix E: 10),
   every chain with its own step size eps_b, adapted after each proposal towards the target
   acceptance rate a* (Appendix E: 90 %) by log eps_b += adapt_rate * (a_b - a*);
2. M-step: `updates` optimiser steps (Appendix E: 5, Adagrad) on -mean_b log p_theta(x_b | z_b)
   at the acquired samples (log p(z) has no parameters), with the recipe's weight decay.

Choices where the paper is silent (docs/reproduction.md, Figure 3):

- **Persistent chains** (`persistent`): each training datapoint keeps its last z and step size
  in buffers of size N_train, so its chain continues where it stopped at its previous visit
  (one new proposal per visit, like a persistent-chain E-step). Restarting chains every visit
  would need a burn-in per minibatch (10-20x the cost) for the same samples.
- **First visit**: the chain starts at the best of `candidates` prior draws by log p(x, z)
  (`aevb.metrics.posterior_start`) and runs `burn_in` extra proposals; its step size starts
  at the mean of the chains already running (`step_size` before any).
- **Tuning rule**: a Robbins-Monro step on log eps per proposal, never frozen: theta moves, so
  the posterior's scale keeps changing. The chain is therefore not an exact MCMC kernel while
  adapting, which MCEM's stochastic E-step tolerates.
- **Minibatch**: the data config's (the paper recipe: M = 100, as AEVB's).
- **Samples counted**: `samples_seen` counts datapoints visited (M per minibatch), the x-axis of
  Fig. 3; `global_step` counts optimiser steps (`updates` per minibatch).

Validation and test: MCEM has no bound to report, and importance sampling from the prior is
useless here (784 binary pixels make p(z|x) a tiny fraction of the prior's mass even with
Nz = 3, so k prior draws underestimate log p(x) by tens of nats), so it logs the Appendix D
estimate (`aevb.metrics.AppendixD`) on the first `eval_points` images:
`val/log_px_hmc` (the checkpoint's monitor, higher is better) and `test/nll_hmc` = -log p(x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from aevb import metrics
from aevb.hmc import HMC
from aevb.latent_model import LatentVariableModel

#: the metric MCEM's best checkpoint is chosen by (it has no val/elbo)
MONITOR = "val/log_px_hmc"
#: seed of the Appendix D estimate at validation/test (the same noise at every validation)
EVAL_SEED = 0


class MonteCarloEM(LatentVariableModel):
    """Decoder p_theta(x|z) and N(0, I) prior fitted by Monte Carlo EM with persistent HMC chains.

    Args (network ones as `aevb.vae.VAE`):
        data_shape, latent_dim, hidden_dims, activation, architecture, likelihood, init_std,
        channels, optim: as for the VAE (only its decoder is kept; default optim: Adagrad 0.01).
        num_train: training-set size N (one persistent chain per datapoint).
        leapfrog_steps: per HMC proposal (Appendix E: 10).
        target_accept: acceptance rate the step sizes are adapted towards (Appendix E: 0.9).
        step_size: leapfrog step size of the first chains.
        adapt_rate: kappa of log eps += kappa * (acceptance - target) after every proposal.
        proposals: HMC proposals per visit of a datapoint (the paper: one 10-step trajectory).
        burn_in: extra proposals on a chain's first visit (every visit if not persistent).
        updates: optimiser steps per minibatch on the acquired samples (Appendix E: 5).
        persistent: keep each datapoint's chain between visits (needs aevb's ImageDataModule).
        candidates: prior draws a new chain starts from the best of.
        eval_points: validation/test images of the Appendix D estimate (0: none).
    """

    default_optim = {"name": "adagrad", "lr": 0.01}

    def __init__(
        self,
        data_shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 3,
        hidden_dims: Sequence[int] = (100,),
        activation: str = "tanh",
        architecture: str = "mlp",
        likelihood: dict[str, Any] | None = None,
        init_std: float | None = None,
        channels: Sequence[int] = (32, 64),
        optim: dict[str, Any] | None = None,
        num_train: int = 1,
        leapfrog_steps: int = 10,
        target_accept: float = 0.9,
        step_size: float = 0.05,
        adapt_rate: float = 0.05,
        proposals: int = 1,
        burn_in: int = 20,
        updates: int = 5,
        persistent: bool = True,
        candidates: int = 64,
        eval_points: int = 100,
    ) -> None:
        net = (data_shape, latent_dim, hidden_dims, activation, architecture, likelihood)
        super().__init__(*net, init_std, channels, encoder=False)
        self.save_hyperparameters()
        self.automatic_optimization = False  # `updates` optimiser steps per minibatch
        #: the persistent chains: last z, log step size, and whether visited, per datapoint
        self.register_buffer("chain_z", torch.zeros(num_train, latent_dim))
        self.register_buffer("chain_log_step", torch.full((num_train,), math.log(step_size)))
        self.register_buffer("chain_visited", torch.zeros(num_train, dtype=torch.bool))
        #: noise of the chains (CPU, so a seed gives the same chains on every device; saved in
        #: checkpoints), seeded from the global RNG that aevb-train seeds before building
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        self._sums: dict[str, Tensor] = {}
        self._epoch_rows: tuple[int, Tensor] | None = None
        self._epoch_position = 0

    # ----- probabilistic API (prior, decode, decode_mean, sample: LatentVariableModel) -------
    @property
    def optimizer_steps_per_batch(self) -> int:
        """Optimiser steps (global_step) per minibatch: aevb-train scales max_steps by it."""
        return int(self.hparams.updates)

    def log_likelihood(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """log p(x) by the Appendix D estimator (paper settings): Tensor[B], nats."""
        generator = generator or torch.Generator().manual_seed(EVAL_SEED)
        return metrics.AppendixD()(x, self.decode, self.prior, generator)

    # ----- E-step ---------------------------------------------------------------------------
    def _rows(self, n: int) -> Tensor:
        """The training-set rows of the epoch's next minibatch of n, from the loader's own
        permutation (its batches are consecutive slices of it, from the first on every iter)."""
        loader = self.trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if not hasattr(sampler, "indices"):
            raise ValueError(
                "model.mcem.persistent must be false unless the data come from aevb's "
                "ImageDataModule (its loader says which rows a batch holds)"
            )
        epoch = self.trainer.current_epoch
        if self._epoch_rows is None or self._epoch_rows[0] != epoch:
            self._epoch_rows = (epoch, sampler.indices().to(self.chain_z.device))
        start = self._epoch_position
        self._epoch_position += n
        return self._epoch_rows[1][start : start + n]

    def e_step(self, x: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Advance the chains of x; returns (z [B, D], acceptance [B], step size [B])."""
        hp = self.hparams
        if rows is None:
            z, fresh = None, torch.ones(len(x), dtype=torch.bool, device=x.device)
        else:
            z, fresh = self.chain_z[rows].clone(), ~self.chain_visited[rows]
        log_eps = (
            self.chain_log_step[rows].clone()
            if rows is not None
            else self.chain_log_step.new_full((len(x),), math.log(hp.step_size))
        )
        if bool(fresh.any()):
            start = metrics.posterior_start(
                x[fresh], self.decode, self.prior, hp.candidates, self.generator
            )
            z = start if z is None else z.index_put((fresh,), start)
            if rows is not None and bool(self.chain_visited.any()):
                running = self.chain_log_step[self.chain_visited].mean()
                log_eps = torch.where(fresh, running, log_eps)

        def log_joint(z: Tensor) -> Tensor:
            return self.prior.log_prob(z) + self.decode(z).log_prob(x)

        hmc = HMC(log_joint, hp.leapfrog_steps, hp.target_accept, self.generator)
        chains = hmc.init(z, log_eps.exp())
        accepted = torch.zeros_like(log_eps)
        steps = hp.proposals + (hp.burn_in if bool(fresh.any()) else 0)
        for _ in range(steps):
            chains, accept_prob = hmc.step(chains)
            log_eps = log_eps + hp.adapt_rate * (accept_prob - hp.target_accept)
            chains.step_size = log_eps.exp()
            accepted += accept_prob
        if rows is not None:
            self.chain_z[rows] = chains.z
            self.chain_log_step[rows] = log_eps
            self.chain_visited[rows] = True
        return chains.z, accepted / max(steps, 1), log_eps.exp()

    # ----- Lightning ------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x = batch[0]
        self.count_samples(x.shape[0])
        rows = self._rows(len(x)) if self.hparams.persistent else None
        z, accept, step = self.e_step(x, rows)
        opt = self.optimizers()
        for i in range(self.hparams.updates):  # M-step on the acquired samples
            log_px_z = self.decode(z).log_prob(x)
            if i == 0:
                log_joint = (self.prior.log_prob(z) + log_px_z).detach()
            self.last_terms = {"log_px_given_z": log_px_z.detach()}  # for DivergenceGuard
            opt.zero_grad()
            self.manual_backward(-log_px_z.mean())
            opt.step()
        self._add("train", log_joint=log_joint, accept=accept, step_size=step)

    def _add(self, prefix: str, **values: Tensor) -> None:
        """Running per-datapoint sums of `values` and their count, on the device."""
        n = next(iter(values.values())).shape[0]
        sums = torch.stack([v.detach().double().sum() for v in values.values()])
        sums = torch.cat([sums, sums.new_tensor([n])])
        key = f"{prefix}:{','.join(values)}"
        self._sums[key] = self._sums[key] + sums if key in self._sums else sums

    def _log(self, prefix: str) -> None:
        """Log `{prefix}/<name>` as exact means of the sums `_add` collected."""
        for key in [k for k in self._sums if k.split(":")[0] == prefix]:
            sums = self._sums.pop(key)
            means = sums[:-1] / sums[-1]
            names = key.split(":")[1].split(",")
            self.log_dict(
                {f"{prefix}/{k}": float(v) for k, v in zip(names, means, strict=True)},
                on_step=False,
                on_epoch=True,
            )

    def _evaluate(self, x: Tensor, prefix: str, name: str, sign: float) -> None:
        """The Appendix D estimate on the first `eval_points` images seen this epoch."""
        need = self.hparams.eval_points - self._eval_seen
        if need <= 0:
            return
        x = x[:need]
        self._eval_seen += len(x)
        log_px = metrics.AppendixD()(x, self.decode, self.prior, self._eval_generator)
        self._add(prefix, **{name: sign * log_px})

    def _start_eval(self) -> None:
        self._eval_seen = 0
        self._eval_generator = torch.Generator().manual_seed(EVAL_SEED)

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch[0], "val", "log_px_hmc", 1.0)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch[0], self.test_prefix, "nll_hmc", -1.0)

    def on_train_epoch_start(self) -> None:
        self._epoch_position = 0

    def on_train_epoch_end(self) -> None:
        self._log("train")

    def on_validation_epoch_end(self) -> None:
        self._log("val")

    def on_test_epoch_end(self) -> None:
        self._log(self.test_prefix)

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            raise ValueError(
                "model.algorithm=mcem runs on one device (trainer.devices=1): its persistent "
                "chains are not sharded across ranks"
            )
        super().on_fit_start()  # the data against the likelihood
        train = getattr(getattr(self.trainer, "datamodule", None), "train_images", None)
        if train is not None and len(train) != len(self.chain_z):
            raise ValueError(
                f"MCEM has {len(self.chain_z)} chains but the training set {len(train)} images"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mcem_generator"] = self.generator.get_state()  # a uint8 tensor

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "mcem_generator" in checkpoint:
            self.generator.set_state(checkpoint["mcem_generator"])
