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
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from aevb import signals
from aevb.atomic import write_json_atomic
from aevb.callbacks import tensorboard_writer
from aevb.data import binarize_once
from aevb.learning_curve import TRAIN_EVAL_BINARIZATION_SEED
from aevb.metrics import AppendixD
from aevb.rundir import RunDir

#: file name of the curve inside a run dir


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


class MarginalCurve(L.Callback):
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
        self.path, self.every = path, float(every_samples)
        self.num_train, self.num_test, self.chunk, self.seed = num_train, num_test, chunk, seed
        self.estimator = AppendixD(
            num_samples=num_samples,
            burn_in=burn_in,
            leapfrog_steps=leapfrog_steps,
            candidates=candidates,
        )
        self.points: list[dict[str, Any]] = []
        self._next = 0.0
        self._data: tuple[Tensor, Tensor] | None = None
        self._t0 = time.perf_counter()
        self._elapsed_before = 0.0  # wall time of earlier sessions (resume)

    def next_after(self, samples: int) -> float:
        """The first grid point strictly above `samples`."""
        return (math.floor(samples / self.every) + 1) * self.every

    def _eval_data(self, trainer: L.Trainer) -> tuple[Tensor, Tensor]:
        if self._data is None:
            dm = trainer.datamodule
            train = dm.train_images[: self.num_train]
            if getattr(dm, "binarize", "none") == "dynamic":
                train = binarize_once(train, TRAIN_EVAL_BINARIZATION_SEED)
            self._data = (train, dm.test_images[: self.num_test])
        return self._data

    def evaluate(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, Any]:
        """Add one point at the current sample count; log it and rewrite the JSON."""
        start = time.perf_counter()
        values = {
            f"{split}_log_px": float(
                marginal_log_likelihood(model, x, self.estimator, self.chunk, self.seed).mean()
            )
            for split, x in zip(("train", "test"), self._eval_data(trainer), strict=True)
        }
        samples = int(model.samples_seen)
        point = {
            "samples": samples,
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            **values,
            "eval_seconds": round(time.perf_counter() - start, 3),
            "wall_time_s": round(self._elapsed_before + time.perf_counter() - self._t0, 3),
        }
        self.points.append(point)
        if trainer.is_global_zero:
            writer = tensorboard_writer(trainer)
            if writer is not None:
                for split in ("train", "test"):
                    value = values[f"{split}_log_px"]
                    writer.add_scalar(f"curve/{split}_log_px_hmc", value, global_step=samples)
            self.write(trainer)
        return point

    def curve_path(self, trainer: L.Trainer) -> Path:
        run = RunDir(Path(trainer.default_root_dir))
        return Path(self.path) if self.path else run.marginal_curve

    def write(self, trainer: L.Trainer) -> None:
        est = self.estimator
        meta = {
            "train_points": len(self._data[0]) if self._data is not None else None,
            "test_points": len(self._data[1]) if self._data is not None else None,
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
        write_json_atomic(self.curve_path(trainer), {**meta, "points": self.points})

    # ----- hooks ------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        samples = int(pl_module.samples_seen)
        if not self.points and samples == 0:  # the untrained model: the curves' first point
            self.evaluate(trainer, pl_module)
        self._next = max(self._next, self.next_after(samples))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        self.on_optimizer_step_end(trainer, pl_module)

    def on_optimizer_step_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After every optimisation step (`aevb.step_groups`): a point when one is due."""
        samples = int(pl_module.samples_seen)
        if samples >= self._next:
            self.evaluate(trainer, pl_module)
            self._next = self.next_after(samples)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if signals.stopping() is not None:  # stopped by a signal: the resumed run goes on
            return  # from last.ckpt, whose curve state has no off-grid point; stop in seconds
        if not self.points or self.points[-1]["samples"] != int(pl_module.samples_seen):
            self.evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        elapsed = self._elapsed_before + time.perf_counter() - self._t0
        return {"points": list(self.points), "next": self._next, "elapsed": elapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = list(state_dict.get("points", []))
        self._next = float(state_dict.get("next", 0.0))
        self._elapsed_before = float(state_dict.get("elapsed", 0.0))
