"""Several optimisation steps per Lightning training step (`steps_per_call`, issue 20 goal 1).

Lightning spends about as much Python per training step as a small model's forward pass
(hooks of every callback, the automatic-optimisation closure, the logger connector). With
`steps_per_call: K > 1` the training loader serves a `StepGroup` of up to K consecutive batches
per Lightning step (never across an epoch end), and the module takes one optimisation step per
batch of the group under manual optimisation (`run_steps`), as Keras' `steps_per_execution`.
The optimisation steps are the same as with K = 1 (same batches, same noise, same order, same
divergence guard before every update), and per-step callbacks (`on_optimizer_step_end`: the
learning curves) still run after the very step they would with K = 1, so a run's numbers do not
depend on K. Settings that count Lightning steps rather than optimisation steps are refused
with K > 1 (`check_steps_per_call`), and so is DDP (`aevb.training`): its wrapper prepares one
gradient all-reduce per forward call, and the group's steps run inside one. This module
imports no torch (the light CLI uses the check).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from aevb.errors import ConfigError

if TYPE_CHECKING:
    import lightning as L
    from torch import Tensor

#: checkpoint key of the K a run was written with (absent: 1)
CHECKPOINT_KEY = "steps_per_call"
#: algorithms whose training step is one loss and one optimiser step per batch
GROUPED_ALGORITHMS = ("aevb", "wake_sleep")


class StepGroup(list):
    """The batches of one Lightning training step with `steps_per_call` > 1, in order."""


def steps_per_call(cfg: Mapping[str, Any]) -> int:
    """The run's `steps_per_call` (1 when the key is absent, as in configs of older runs)."""
    value = cfg.get("steps_per_call", 1)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not ok:
        raise ConfigError("steps_per_call", "a whole number >= 1", value)
    return value


def check_steps_per_call(cfg: Mapping[str, Any]) -> int:
    """Validate `steps_per_call` against the settings K > 1 cannot honour (reading the composed
    config, before the likelihood check of `aevb.config.Settings` loads torch); returns K."""
    k = steps_per_call(cfg)
    if k == 1:
        return k
    trainer = cfg.get("trainer") or {}
    algorithm = (cfg.get("model") or {}).get("algorithm", "aevb")

    def refuse(key: str, allowed: str, value: Any) -> None:
        raise ConfigError(key, f"{allowed} with steps_per_call={k} (or steps_per_call=1)", value)

    if algorithm not in GROUPED_ALGORITHMS:  # MCEM takes its own optimiser steps per batch
        refuse("model.algorithm", " or ".join(GROUPED_ALGORITHMS), algorithm)
    if trainer.get("gradient_clip_val"):
        refuse("trainer.gradient_clip_val", "null", trainer.get("gradient_clip_val"))
    if trainer.get("accumulate_grad_batches", 1) not in (None, 1):
        refuse("trainer.accumulate_grad_batches", "1", trainer.get("accumulate_grad_batches"))
    if trainer.get("limit_train_batches") is not None:  # counts Lightning steps
        refuse("trainer.limit_train_batches", "null", trainer.get("limit_train_batches"))
    interval = trainer.get("val_check_interval")
    if interval not in (None, 1.0) or trainer.get("check_val_every_n_epoch", 1) is None:
        refuse(  # Lightning counts them in its steps: validation stays at epoch ends
            "trainer.val_check_interval",
            "null (validation every check_val_every_n_epoch epochs)",
            interval,
        )
    return k


def run_steps(
    module: L.LightningModule,
    group: StepGroup,
    batch_idx: int,
    step: Callable[[Any, int], Tensor],
) -> None:
    """Take one optimisation step per batch of `group` (the module's manual-optimisation
    training step). `step(batch, index)` returns the loss of one batch, where index is the
    batch's index in the epoch (as `training_step`'s batch_idx with K = 1).

    On one device in 32-bit precision with no backward hooks (aevb's own callbacks have none),
    a step calls backward and the torch optimizer directly, with the hooks Lightning would call
    around them (`on_before_optimizer_step`: the divergence guard; the step counter): what
    `manual_backward` and `LightningOptimizer.step` add there is dispatch only (0.2-0.3 ms per
    step on one CPU thread). Otherwise it goes through them."""
    from aevb.lr_schedules import catch_up

    trainer, optimizer = module.trainer, module.optimizers()
    per_group = trainer.datamodule.steps_per_call
    direct = _direct_hooks(trainer, module)
    raw = optimizer.optimizer
    params = [p for g in raw.param_groups for p in g["params"]]
    scheduled = bool(trainer.lr_scheduler_configs)
    for k, batch in enumerate(group):
        if 0 <= trainer.max_steps <= trainer.global_step:  # the budget ends inside the group
            return
        index = batch_idx * per_group + k  # the batch's index in the epoch, as with K = 1
        if scheduled:  # Lightning steps no scheduler under manual optimisation
            catch_up(trainer)
            module.log_lr(index)
        loss = step(batch, index)
        if direct is None:
            optimizer.zero_grad()  # the order of Lightning's automatic optimisation
            module.manual_backward(loss)
            optimizer.step()  # runs on_before_optimizer_step (the divergence guard) first
        else:
            for p in params:  # Optimizer.zero_grad(set_to_none=True), without its dispatch
                p.grad = None
            loss.backward()
            optimizer._on_before_step()  # Lightning's step counter (global_step), as step() does
            for hook in direct:
                hook(raw)
            raw.step()
            optimizer._on_after_step()
        if k < len(group) - 1:  # the group's last step is followed by on_train_batch_end
            for callback in trainer.callbacks:
                hook = getattr(callback, "on_optimizer_step_end", None)
                if hook is not None:
                    hook(trainer, module)


def _direct_hooks(trainer: L.Trainer, module: L.LightningModule) -> list[Callable] | None:
    """The `on_before_optimizer_step` hooks (callbacks', then the module's) to call around a
    direct step, or None where a step must go through Lightning: another strategy or precision
    than one device in 32 bits (their backward and step differ), or a callback or the module
    that defines `on_before_backward`/`on_after_backward`, or a module with its own `backward`
    (only Lightning's path calls them)."""
    import lightning as L
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.strategies import SingleDeviceStrategy

    if type(trainer.precision_plugin) is not Precision:
        return None
    if not isinstance(trainer.strategy, SingleDeviceStrategy):
        return None
    owners = [(c, L.Callback) for c in trainer.callbacks] + [(module, L.LightningModule)]
    for obj, base in owners:
        if any(_overrides(obj, base, name) for name in _BACKWARD_HOOKS):
            return None
    if _overrides(module, L.LightningModule, "backward"):  # Lightning's backward calls it
        return None
    hooks: list[Callable] = [
        partial(c.on_before_optimizer_step, trainer, module)
        for c in trainer.callbacks
        if _overrides(c, L.Callback, "on_before_optimizer_step")
    ]
    if _overrides(module, L.LightningModule, "on_before_optimizer_step"):
        hooks.append(module.on_before_optimizer_step)
    return hooks


#: hooks that only Lightning's backward calls: a step goes through it when one is defined
_BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")


def _overrides(obj: object, base: type, name: str) -> bool:
    return getattr(type(obj), name) is not getattr(base, name)
