"""Learning-rate schedules (the `lr_schedule` config group) on torch.optim.lr_scheduler.

A schedule sets lr_t = optim.lr * f(t), where t counts `interval`s (epochs, or optimiser steps)
completed so far:

    none         f(t) = 1
    multistep    f(t) = gamma^|{m in milestones : m <= t}|
    exponential  f(t) = gamma^t
    cosine       f(t) = eta_min / lr + (1 - eta_min / lr) * (1 + cos(pi * t / t_max)) / 2
    iwae         f(t) = 10^(-i/7) for sum_{j<i} 3^j <= t < sum_{j<=i} 3^j, i = 0 .. stages - 1
                 (Burda et al. 2016: 3^i epochs at 1e-3 * 10^(-i/7); 8 stages = 3,280 epochs)
    plateau      f multiplied by `factor` once val/elbo has not improved for `patience`
                 validations (ReduceLROnPlateau, mode max; stepped after every validation)

`aevb.registry.LR_SCHEDULES` maps each name to its builder below; a builder's keyword arguments
are the keys its `conf/lr_schedule/<name>.yaml` may hold (checked by `aevb.config`). The
schedulers' state dicts hold only numbers, lists and dicts (MultiStepLR's milestones: a
collections.Counter), all of which `torch.load(..., weights_only=True)` reads; Lightning saves
them in checkpoints and a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import lightning as L
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LRScheduler,
    MultiStepLR,
    ReduceLROnPlateau,
)

from aevb.registry import LR_SCHEDULES

Scheduler = LRScheduler | ReduceLROnPlateau


#: the metric ReduceLROnPlateau follows (maximised)
PLATEAU_MONITOR = "val/elbo"

#: the tag `train/lr` is logged under
LR_TAG = "train/lr"


def none(optimizer: Optimizer) -> None:
    """A constant learning rate: no scheduler at all."""
    return None


def multistep(optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1) -> MultiStepLR:
    """lr * gamma^(number of milestones reached)."""
    return MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


def exponential(optimizer: Optimizer, gamma: float) -> ExponentialLR:
    """lr * gamma^t."""
    return ExponentialLR(optimizer, gamma=gamma)


def cosine(
    optimizer: Optimizer, t_max: int | None = None, eta_min: float = 0.0
) -> CosineAnnealingLR:
    """Half a cosine from lr down to eta_min over t_max intervals (null: the whole run)."""
    if t_max is None:
        raise ValueError("cosine: t_max must be resolved to the run's length first")
    return CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)


def iwae_milestones(stages: int) -> list[int]:
    """Epochs at which stage i + 1 starts: 1, 4, 13, 40, ... (stage i lasts 3^i epochs)."""
    return list(accumulate(3**i for i in range(stages - 1)))


def iwae(optimizer: Optimizer, stages: int = 8) -> MultiStepLR:
    """Burda et al. (2016): lr * 10^(-i/7) for 3^i epochs, i = 0 .. stages - 1: a multi-step
    schedule with gamma = 10^(-1/7) and milestones at the stage boundaries."""
    return MultiStepLR(optimizer, milestones=iwae_milestones(stages), gamma=10 ** (-1 / 7))


def iwae_epochs(stages: int) -> int:
    """Length of the IWAE schedule: sum_i 3^i = (3^stages - 1) / 2 epochs (3,280 for 8)."""
    return (3**stages - 1) // 2


def plateau(
    optimizer: Optimizer,
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 0.1,
    threshold_mode: str = "abs",
    cooldown: int = 0,
    min_lr: float = 0.0,
) -> ReduceLROnPlateau:
    """lr * factor whenever val/elbo has not improved for `patience` validations.

    An improvement is val/elbo > best + threshold (abs, nats) or > best * (1 + threshold) (rel):
    for a negative ELBO, rel accepts a slightly *worse* value as better, hence abs by default.
    """
    return ReduceLROnPlateau(
        optimizer,
        mode="max",
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_lr=min_lr,
    )


def run_length(trainer: L.Trainer, interval: str) -> int:
    """How many `interval`s the trainer will run: its optimiser steps, or epochs rounded up.

    Lightning knows the epoch's length only once it has loaded the training data, which a
    budget run (max_steps) has not when the optimisers are configured: the loader then says.
    With steps_per_call K > 1 (`aevb.step_groups`) Lightning counts a group of K batches as one
    batch but max_steps in optimiser steps: the epoch's optimiser steps are the loader's
    `batches_per_epoch` (K > 1 refuses limit_train_batches and gradient accumulation)."""
    steps = int(trainer.estimated_stepping_batches)  # max_steps, or epochs x batches
    k = getattr(getattr(trainer, "datamodule", None), "steps_per_call", 1)
    if k == 1 and trainer.num_training_batches != math.inf:
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    else:
        loader = trainer.train_dataloader  # None until Lightning has loaded the data
        if loader is None:
            loader = trainer.datamodule.train_dataloader()
        per_epoch = math.ceil(loader.batches_per_epoch / trainer.accumulate_grad_batches)
        if k > 1 and trainer.max_steps < 0:  # epochs x groups: in optimiser steps instead
            steps = trainer.max_epochs * per_epoch
    if interval == "step":
        return steps
    return max(1, math.ceil(steps / max(1, per_epoch)))


def lightning_scheduler(
    optimizer: Optimizer, spec: dict[str, Any], trainer: L.Trainer
) -> dict[str, Any] | None:
    """Lightning's `lr_scheduler` config for `spec` = {"name", "interval", **keys}, or None.

    cosine's t_max = null becomes the run's length; plateau is stepped after each validation
    by `step_plateau`, so `frequency` does not apply to it.
    """
    keys = dict(spec)
    name, interval = keys.pop("name"), keys.pop("interval", "epoch")
    if name == "cosine" and keys.get("t_max") is None:
        keys["t_max"] = run_length(trainer, interval)
    scheduler = LR_SCHEDULES[name](optimizer, **keys)
    if scheduler is None:
        return None
    config: dict[str, Any] = {"scheduler": scheduler, "interval": interval, "name": LR_TAG}
    if is_plateau(scheduler):  # Lightning requires a monitor; the module steps it (step_plateau)
        config.update(monitor=PLATEAU_MONITOR, strict=False)
    return config


def is_plateau(scheduler: object) -> bool:
    """Whether the scheduler follows val/elbo (stepped by `step_plateau`, not by Lightning)."""
    return isinstance(scheduler, ReduceLROnPlateau)


def catch_up(trainer: L.Trainer) -> None:
    """Step each scheduler but plateau to where Lightning's automatic optimisation has it before
    the next optimiser step: an epoch-interval one once per completed epoch, a step-interval one
    once per optimiser step taken (`last_epoch` counts its steps).

    Under manual optimisation (steps_per_call > 1, `aevb.step_groups.run_steps`) Lightning steps
    no scheduler; calling this before every optimiser step gives each step the learning rate it
    has with K = 1, from counters a checkpoint restores (global_step, current_epoch), so a resumed
    run catches up by itself."""
    for config in trainer.lr_scheduler_configs:
        if is_plateau(config.scheduler):
            continue
        target = trainer.current_epoch if config.interval == "epoch" else trainer.global_step
        while config.scheduler.last_epoch < target:
            with warnings.catch_warnings():  # a resumed run's optimiser stepped before the save
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
                config.scheduler.step()


def step_plateau(configs: Sequence[Any], val_elbo: float | Tensor) -> None:
    """Step each ReduceLROnPlateau of Lightning's `trainer.lr_scheduler_configs` with this
    validation's val/elbo.

    Called from the module's on_validation_epoch_end, i.e. before ModelCheckpoint saves in
    on_validation_end: the checkpoint then holds the stepped state. Lightning itself would step
    after that save and skip the step when resuming, so a resumed run would miss one update.
    """
    for config in configs:
        if is_plateau(config.scheduler):
            config.scheduler.step(float(val_elbo))
