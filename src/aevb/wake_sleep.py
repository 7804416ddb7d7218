"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995): the paper's baseline in Fig. 2.

Same encoder q_phi(z|x), decoder p_theta(x|z), prior, likelihood, optimiser, logging and
test-time metrics as `aevb.vae.VAE` (it is a subclass); only the training step differs:

- wake phase: z ~ q(z|x) held fixed (no gradient into phi), maximise log p_theta(x, z) over
  theta. Since p(z) has no parameters and the KL term of the bound does not depend on theta,
  this is the gradient of the paper's bound (eq. 10, estimator B) with q frozen, so the wake
  loss is `-metrics.elbo(...)` on a detached posterior: the one ELBO function, which also
  supplies the logged `train/{elbo,recon,kl}` of the current q and p.
- sleep phase: z ~ p(z), x ~ p_theta(x|z) (a "dream", no gradient into theta), maximise
  log q_phi(z|x) over phi.

Both phases run on every minibatch (as many dreams as datapoints) and one optimiser step
updates both parameter sets: their gradients touch disjoint parameters, and Adagrad, Adam and
SGD act per parameter, so this equals two separate optimisers. Validation and test use the
VAE's steps unchanged, so `val/elbo` and `test/elbo` are the same bound AEVB reports.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aevb import metrics
from aevb.vae import VAE


class WakeSleep(VAE):
    """A Helmholtz machine trained by wake-sleep; constructor arguments as `VAE` (beta,
    warm-up and free bits must stay off: the losses below have no KL weight)."""

    def wake_loss(self, x: Tensor) -> tuple[metrics.ELBOTerms, Tensor]:
        """Wake phase: ELBO terms of x under the current q and p, and -E_q[log p(x|z)] (nats per
        datapoint) whose gradient reaches only the decoder and likelihood."""
        mean, logvar = self.encoder(x)
        q_fixed = metrics.diagonal_gaussian(mean.detach(), logvar.detach())
        terms = metrics.elbo(
            x, q_fixed, self.decode, self.prior, samples=self.hparams.samples, kl=self.hparams.kl
        )
        return terms, -terms.elbo.mean()

    def dream(self, n: int) -> tuple[Tensor, Tensor]:
        """n fantasies (z, x) with z ~ p(z), x ~ p(x|z) drawn from the generative model."""
        with torch.no_grad():
            z = self.prior.sample((n,))
            x = self.decode(z).sample()
        return z, x

    def sleep_loss(self, n: int) -> Tensor:
        """Sleep phase: -mean log q(z|x) over n dreams (nats per dream); gradient into phi only."""
        z, x = self.dream(n)
        return -self.encode(x).log_prob(z).mean()

    def train_batch(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = batch[0]
        self.count_samples(x.shape[0])
        terms, wake = self.wake_loss(x)
        sleep = self.sleep_loss(x.shape[0])
        loss = wake + sleep
        self.last_terms = {"recon": terms.recon.detach(), "kl": terms.kl.detach()}
        self._epoch("train").add(terms, loss)
        if batch_idx % self.trainer.log_every_n_steps == 0:
            self._log_direct(
                {"train/wake_loss": float(wake.detach()), "train/sleep_loss": float(sleep.detach())}
            )
        return loss
