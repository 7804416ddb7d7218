"""Marginal log-likelihood on the paper's Fig. 3 axes: the Appendix D estimate of log p(x) of
fixed training and test points against training samples seen (linear grid), for any algorithm.

`marginal_log_likelihood(model, images)` is the estimate for a trained model of any algorithm
(`aevb.metrics.AppendixD`: HMC draws from p(z|x), a Gaussian fitted to them, fresh draws, the
reciprocal-importance average). Every chain starts at the best of `candidates` prior draws by
log p(x, z), and, where the model has an encoder, its posterior mean is one more candidate: the
procedure is the same for AEVB, wake-sleep and MCEM, only the starting guess may be better.
`aevb-eval RUN eval.marginal=hmc` reports it as `test/nll_hmc`.

`MarginalCurve` (a Lightning callback) records it every `every_samples` training samples, at
the start and at the end of training, on the first `num_train` training points (binarized once,
as the learning curve's) and the first `num_test` test points (Appendix E: 1000 each), logs
`curve/train_log_px_hmc` and `curve/test_log_px_hmc` with the sample count as TensorBoard step,
and rewrites `marginal_curve.json` in the run dir atomically (`aevb-figures` draws Fig. 3 from it).
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor

from aevb.learning_curve import SampleCurve
from aevb.metrics import AppendixD


def marginal_log_likelihood(
    model: L.LightningModule,
    images: Tensor,
    estimator: AppendixD | None = None,
    chunk: int = 500,
    seed: int = 0,
) -> Tensor:
    """log p(x) of each image by the Appendix D estimator, Tensor[N] float64 on the CPU (nats).

    `chunk` images are one batch of chains; the noise comes from one CPU generator seeded with
    `seed`, so the estimate depends on (seed, chunk) but not on the device.
    """
    estimator = estimator or AppendixD()
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), chunk):
            x = images[i : i + chunk].to(model.device)
            z0 = None
            if hasattr(model, "encoder"):
                with torch.no_grad():
                    z0 = model.encode(x).mean
            log_px = estimator(x, model.decode, model.prior, generator, z0)
            out.append(log_px.detach().double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


class MarginalCurve(SampleCurve):
    """Train/test log p(x) (Appendix D) at every `every_samples` training samples (Fig. 3).

    Args:
        path: JSON file to (re)write after each point; null = `marginal_curve.json` in the
            trainer's default_root_dir (the run dir of `aevb-train`).
        every_samples: spacing of the linear grid of training-sample counts.
        num_train, num_test: the first training / test points evaluated (Appendix E: 1000).
        chunk: chains per batch.
        seed: of the HMC noise, the same at every point of the curve.
        num_samples, burn_in, leapfrog_steps, candidates: of `aevb.metrics.AppendixD`.
    """

    run_file = "marginal_curve"

    def __init__(
        self,
        path: str | None = None,
        every_samples: float = 2e6,
        num_train: int = 1000,
        num_test: int = 1000,
        chunk: int = 500,
        seed: int = 0,
        num_samples: int = 50,
        burn_in: int = 100,
        leapfrog_steps: int = 4,
        candidates: int = 64,
    ) -> None:
        if not (every_samples >= 1):
            raise ValueError(f"every_samples must be >= 1 training sample, got {every_samples}")
        for name, n in (("num_train", num_train), ("num_test", num_test), ("chunk", chunk)):
            if not (isinstance(n, int) and n > 0):
                raise ValueError(f"{name} must be an integer > 0, got {n!r}")
        super().__init__(path, num_train, num_test, first=0.0)
        self.every, self.chunk, self.seed = float(every_samples), chunk, seed
        self.estimator = AppendixD(
            num_samples=num_samples,
            burn_in=burn_in,
            leapfrog_steps=leapfrog_steps,
            candidates=candidates,
        )

    def next_after(self, samples: int) -> float:
        """The first grid point strictly above `samples`."""
        return (math.floor(samples / self.every) + 1) * self.every

    def evaluate(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, Any]:
        """Add one point at the current sample count; log it and rewrite the JSON."""
        start = time.perf_counter()
        values = {
            f"{split}_log_px": float(
                marginal_log_likelihood(model, x, self.estimator, self.chunk, self.seed).mean()
            )
            for split, x in zip(("train", "test"), self.eval_images(trainer), strict=True)
        }
        scalars = {f"curve/{s}_log_px_hmc": values[f"{s}_log_px"] for s in ("train", "test")}
        values["eval_seconds"] = round(time.perf_counter() - start, 3)
        return self.add_point(trainer, self.samples_seen(model), values, scalars)

    def settings(self) -> dict[str, Any]:
        est = self.estimator
        return {
            "every_samples": self.every,
            "estimator": {
                "name": "appendix_d",
                "num_samples": est.num_samples,
                "burn_in": est.burn_in,
                "leapfrog_steps": est.leapfrog_steps,
                "candidates": est.candidates,
                "seed": self.seed,
            },  # fmt: skip
        }

    # ----- hooks ------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        samples = int(pl_module.samples_seen)
        if not self.points and samples == 0:  # the untrained model: the curves' first point
            self.evaluate(trainer, pl_module)
        self._next = max(self._next, self.next_after(samples))
