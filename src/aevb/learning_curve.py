"""Learning curves on the paper's x-axis (Fig. 2): lower bounds against training samples seen.

`LearningCurve` evaluates the average ELBO per datapoint (`model.elbo`, eq. 10: the one ELBO
function) on a fixed subset of the training set and on the test set whenever the number of
training samples seen crosses the next point of a log-spaced grid (`points_per_decade` per
decade from `start`), and once more at the end of training. Each point is logged to TensorBoard
as `curve/train_elbo` and `curve/test_elbo` with the sample count as the step, and the whole
curve is rewritten atomically to `learning_curve.json` in the run dir (`aevb-figures` reads it).
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
from aevb.numerics import full_precision
from aevb.rng import forked_streams
from aevb.rundir import RunDir

#: seed of the one-off binarization of the training subset (dynamic binarization only)
TRAIN_EVAL_BINARIZATION_SEED = 20131221


def log_grid(start: float, stop: float, per_decade: int) -> list[int]:
    """Sample counts start * 10^(k / per_decade) for k = 0, 1, ... up to stop (rounded, unique)."""
    if not (start >= 1 and stop >= start and per_decade >= 1):
        raise ValueError(f"need 1 <= start <= stop and per_decade >= 1, got {start}, {stop}")
    points: list[int] = []
    k = 0
    while (value := start * 10 ** (k / per_decade)) <= stop * (1 + 1e-9):
        n = round(value)
        if not points or n > points[-1]:
            points.append(n)
        k += 1
    return points


class SampleCurve(L.Callback):
    """A curve against training samples seen: a point when the count reaches the next point of
    the grid and one at the end of training, kept in checkpoints (`state_dict`) and rewritten
    to a JSON file of the run dir after each point (`LearningCurve`, `MarginalCurve`).

    Subclasses give the grid (`next_after`), a point's values (`evaluate`, which calls
    `add_point`), the file (`run_file`, a `RunDir` entry) and its settings (`settings`).
    """

    #: the `RunDir` entry of the curve's file when `path` is null
    run_file: str

    def __init__(
        self, path: str | None, num_train: int | None, num_test: int | None, first: float
    ) -> None:
        self.path = path
        self.num_train, self.num_test = num_train, num_test
        self.points: list[dict[str, Any]] = []
        self._first = self._next = first  # the grid's first point
        self._data: tuple[Tensor, Tensor] | None = None
        self._t0 = time.perf_counter()
        self._elapsed_before = 0.0  # wall time of earlier sessions (resume)

    def next_after(self, samples: int) -> float:
        """The first grid point strictly above `samples`."""
        raise NotImplementedError

    def evaluate(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, Any]:
        """Add one point at the current sample count (`add_point`)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The curve's settings, written beside its points."""
        return {}

    def samples_seen(self, model: L.LightningModule) -> int:
        """Training samples seen over all ranks."""
        return int(model.samples_seen)

    def eval_images(self, trainer: L.Trainer) -> tuple[Tensor, Tensor]:
        """The first `num_train` training images (binarized once with a fixed seed when the run
        binarizes dynamically) and the first `num_test` test images; read once."""
        if self._data is None:
            dm = trainer.datamodule
            train = dm.train_images[: self.num_train]
            if getattr(dm, "binarize", "none") == "dynamic":
                train = binarize_once(train, TRAIN_EVAL_BINARIZATION_SEED)
            self._data = (train, dm.test_images[: self.num_test])
        return self._data

    def add_point(
        self, trainer: L.Trainer, samples: int, values: dict[str, Any], scalars: dict[str, float]
    ) -> dict[str, Any]:
        """Append `{samples, step, epoch, **values, wall_time_s}`; on rank 0, log `scalars` to
        TensorBoard with the sample count as step and rewrite the file."""
        point = {
            "samples": samples,
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            **values,
            "wall_time_s": round(self._elapsed_before + time.perf_counter() - self._t0, 3),
        }
        self.points.append(point)
        if trainer.is_global_zero:
            writer = tensorboard_writer(trainer)
            if writer is not None:
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, global_step=samples)
            self.write(trainer)
        return point

    def curve_path(self, trainer: L.Trainer) -> Path:
        run = RunDir(Path(trainer.default_root_dir))
        return Path(self.path) if self.path else getattr(run, self.run_file)

    def write(self, trainer: L.Trainer) -> None:
        meta = {
            "train_points": len(self._data[0]) if self._data is not None else None,
            "test_points": len(self._data[1]) if self._data is not None else None,
            **self.settings(),
        }
        write_json_atomic(self.curve_path(trainer), {**meta, "points": self.points})

    # ----- hooks ------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        self.on_optimizer_step_end(trainer, pl_module)

    def on_optimizer_step_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After every optimisation step (`aevb.step_groups`): a point when one is due."""
        samples = self.samples_seen(pl_module)
        if samples >= self._next:
            self.evaluate(trainer, pl_module)
            self._next = self.next_after(samples)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if signals.stopping() is not None:  # stopped by a signal: the resumed run goes on
            return  # from last.ckpt, whose curve state has no off-grid point; stop in seconds
        samples = self.samples_seen(pl_module)
        if not self.points or self.points[-1]["samples"] != samples:
            self.evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        elapsed = self._elapsed_before + time.perf_counter() - self._t0
        return {"points": list(self.points), "next": self._next, "elapsed": elapsed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = list(state_dict.get("points", []))
        self._next = float(state_dict.get("next", self._first))
        self._elapsed_before = float(state_dict.get("elapsed", 0.0))


class LearningCurve(SampleCurve):
    """Train/test lower bounds at log-spaced training-sample counts (the paper's Fig. 2).

    Args:
        path: JSON file to (re)write after each point; null = `learning_curve.json` in the
            trainer's default_root_dir (the run dir of `aevb-train`).
        start: first sample count of the grid (e.g. 1e3 or 1e4).
        points_per_decade: grid points per factor of 10.
        num_train: training images in the fixed evaluation subset (the first ones of the
            shuffled training split; null = all); binarized once with a fixed seed when the run
            uses dynamic binarization, so the train bound is on data like the test bound's.
        num_test: test images evaluated (null = all).
        batch_size: images per forward pass.
        seed: of the z draws (L=1 per image), on the CPU and device streams forked and set to
            it (`aevb.rng.forked_streams`), so the training noise continues unchanged.
    """

    run_file = "learning_curve"

    def __init__(
        self,
        path: str | None = None,
        start: float = 1e4,
        points_per_decade: int = 4,
        num_train: int | None = 10000,
        num_test: int | None = None,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> None:
        if not (isinstance(points_per_decade, int) and points_per_decade >= 1):
            raise ValueError(f"points_per_decade must be an integer >= 1, got {points_per_decade}")
        if not start >= 1:
            raise ValueError(f"start must be >= 1 training sample, got {start}")
        for name, n in (("num_train", num_train), ("num_test", num_test)):
            if n is not None and not (isinstance(n, int) and n > 0):
                raise ValueError(f"{name} must be null or an integer > 0, got {n!r}")
        super().__init__(path, num_train, num_test, first=float(start))
        self.start, self.per_decade = float(start), points_per_decade
        self.batch_size, self.seed = batch_size, seed
        #: train/test log-likelihood of the fitted model that ignores z (`Likelihood.z_ignored`)
        self.z_ignored: dict[str, float] | None = None

    # ----- grid -------------------------------------------------------------------------------
    def next_after(self, samples: int) -> float:
        """The first grid point strictly above `samples`."""
        k = math.floor(self.per_decade * math.log10(max(samples, 1) / self.start)) + 1
        k = max(k, 0)
        value = self.start * 10 ** (k / self.per_decade)
        while value <= samples:  # guard float rounding
            k += 1
            value = self.start * 10 ** (k / self.per_decade)
        return value

    # ----- evaluation -------------------------------------------------------------------------
    def eval_images(self, trainer: L.Trainer) -> tuple[Tensor, Tensor]:
        if self._data is None:
            data = super().eval_images(trainer)
            train_images = trainer.datamodule.train_images
            reference = trainer.lightning_module.likelihood.z_ignored(train_images)
            if reference is not None:  # the bound of the best model that ignores z
                self.z_ignored = {
                    split: float(reference.log_prob(x.to(reference.mean.device)).mean())
                    for split, x in zip(("train", "test"), data, strict=True)
                }
        return self._data

    @torch.no_grad()
    def mean_elbo(self, model: L.LightningModule, x: Tensor) -> float:
        """Average ELBO per datapoint of images x (nats), in batches, L = 1 draw each."""
        total = 0.0
        for i in range(0, len(x), self.batch_size):
            batch = x[i : i + self.batch_size].to(model.device)
            total += float(model.elbo(batch, samples=1).double().sum())
        return total / len(x)

    def evaluate(self, trainer: L.Trainer, model: L.LightningModule) -> dict[str, Any]:
        """Add one point at the current sample count; log it and rewrite the JSON."""
        train_x, test_x = self.eval_images(trainer)
        was_training = model.training
        model.eval()
        try:
            with forked_streams(self.seed, model.device), full_precision():
                train_elbo = self.mean_elbo(model, train_x)
                test_elbo = self.mean_elbo(model, test_x)
        finally:
            model.train(was_training)
        values = {"train_elbo": train_elbo, "test_elbo": test_elbo}
        scalars = {"curve/train_elbo": train_elbo, "curve/test_elbo": test_elbo}
        return self.add_point(trainer, self.samples_seen(model), values, scalars)

    def samples_seen(self, model: L.LightningModule) -> int:
        """Training samples seen over all ranks, from the host-side count (no device sync)."""
        host = getattr(model, "samples_seen_host", None)
        return int(model.samples_seen) if host is None else host

    def settings(self) -> dict[str, Any]:
        return {
            "points_per_decade": self.per_decade,
            "start": self.start,
            "z_ignored": self.z_ignored,
        }

    # ----- hooks ------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._next = max(self._next, self.next_after(int(pl_module.samples_seen) - 1))
