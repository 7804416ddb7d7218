"""Stop a run at the first non-finite loss term or gradient, before the optimizer applies it.

The check runs after backward and before the optimizer step, so the parameters never take a
non-finite update and the checkpoints already on disk (`last.ckpt` of the previous epoch, the
best one) stay the last good state. The entry point turns `Diverged` into `status: diverged`
in metrics.json. Gradient clipping (`trainer.gradient_clip_val`) is applied after this check.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from aevb.distributed import any_rank
from aevb.errors import Diverged

#: steps between two reads of the flags on an accelerator with a fused optimizer (auto)
ACCELERATOR_EVERY = 100


def _skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's step honours `found_inf` (torch's fused implementations)."""
    return bool(optimizer.defaults.get("fused"))


class DivergenceGuard(L.Callback):
    """Raise `Diverged` when the step's recon/KL terms or the gradient norm are not finite.

    Reads the module's `last_terms` ({name: Tensor} of the step's loss terms, set by the
    LightningModule) and the gradients, in one fused norm pass. Every step's non-finite flags
    are OR-ed into one flag tensor on the device (no host sync); a single process that checks
    every step (the CPU default) reads the step's flag at once instead. A fused optimizer
    (`optim.fused=true`, the default) is handed the step's flag as `found_inf`, as torch's
    GradScaler does, so it skips that step's update on the device: no non-finite update is
    ever applied, whatever the interval.
    Every `check_every_n_steps`-th step, before validation and before any checkpoint is
    written, the flags are all-reduced over ranks (every rank decides alike) and read once; the
    run then stops naming the first bad step. None (the default) picks 1 on a CPU, where a read
    costs nothing, and `ACCELERATOR_EVERY` on an accelerator with a fused optimizer, where a
    per-step read stalls the device and rules out CUDA graphs (1 with an unfused one, which
    cannot skip an update on the device).
    """

    def __init__(self, check_every_n_steps: int | None = None, check_grads: bool = True) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(
                "callbacks.divergence.check_every_n_steps must be >= 1 or null (auto), "
                f"got {check_every_n_steps}"
            )
        self.requested, self.check_grads = check_every_n_steps, check_grads
        self.every = check_every_n_steps or 1
        self._names: list[str] = []
        self._flags: Tensor | None = None  # [terms] bool: non-finite at some step since start
        self._first: Tensor | None = None  # the first step with a non-finite term (-1: none)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._params = [p for p in pl_module.parameters() if p.requires_grad]
        self._flags = self._first = None
        if self.requested is None:
            on_cpu = pl_module.device.type == "cpu"
            fused = all(_skips_on_device(o) for o in trainer.optimizers)
            self.every = 1 if on_cpu or not fused else ACCELERATOR_EVERY

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        terms: dict[str, Tensor] = dict(getattr(pl_module, "last_terms", None) or {})
        params = getattr(self, "_params", ()) if self.check_grads else ()
        grads = [p.grad for p in params if p.grad is not None]
        if not terms and not grads:
            return
        # one fused pass: a tensor is non-finite iff its L2 norm is (norms beyond float32's
        # range, ~1e19 per element, count as diverged too)
        finite = torch.isfinite(torch.stack(torch._foreach_norm([*terms.values(), *grads])))
        names = [*terms, *(["gradient"] if grads else [])]
        if self.every == 1 and trainer.world_size == 1:  # checked now: nothing to accumulate
            if not bool(finite.all()):  # the one host sync (free on a CPU)
                first = int((~finite).nonzero()[0])
                raise Diverged(
                    trainer.global_step, trainer.current_epoch, names[min(first, len(terms))]
                )
            return
        n = len(terms)
        bad = ~torch.cat([finite[:n], finite[n:].all().unsqueeze(0)]) if grads else ~finite
        if self._flags is None or names != self._names:
            self._names = names
            self._flags = torch.zeros_like(bad)  # so a first step already bad is "fresh"
            self._first = torch.full_like(bad, -1, dtype=torch.long)
        fresh = bad & ~self._flags
        self._first = torch.where(fresh, trainer.global_step, self._first)
        self._flags = self._flags | bad
        if optimizer is not None and _skips_on_device(optimizer):
            optimizer.found_inf = bad.any().float()  # read by the fused step: skip it
        if trainer.global_step % self.every == 0:
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)  # never validate (or log) non-finite weights

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.check(trainer)  # never write a checkpoint of a diverged run

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """All-reduce the flags (collective: every rank calls it at the same steps) and raise
        `Diverged` naming the first non-finite term and its step, on every rank alike."""
        if self._flags is None:
            return
        flags = any_rank(self._flags, trainer)
        if not bool(flags.any()):  # the one host sync
            return
        first = self._first.clone()
        if trainer.world_size > 1:  # the earliest step over ranks (-1 = never: ignore)
            never = torch.iinfo(torch.long).max
            first = torch.where(first < 0, never, first)
            first = -trainer.strategy.reduce(-first, reduce_op="max")
            first = torch.where(first == never, -1, first)
        steps = first.tolist()
        seen = [s for s in steps if s >= 0]
        step = min(seen) if seen else trainer.global_step
        name = next(
            (
                n
                for n, s, f in zip(self._names, steps, flags.tolist(), strict=True)
                if f and s == step
            ),
            next(n for n, f in zip(self._names, flags.tolist(), strict=True) if f),
        )
        raise Diverged(step, trainer.current_epoch, name)
