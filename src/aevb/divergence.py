"""Stop a run at the first non-finite loss term or gradient, before the optimizer applies it.

The check runs after backward and before the optimizer step, so the parameters never take a
non-finite update and the checkpoints already on disk (`last.ckpt` of the previous epoch, the
best one) stay the last good state. The entry point turns `Diverged` into `status: diverged`
in metrics.json. Gradient clipping (`trainer.gradient_clip_val`) is applied after this check.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor


class Diverged(RuntimeError):
    """A non-finite loss term or gradient; str() is one line naming the step and the term."""

    def __init__(self, step: int, epoch: int, term: str) -> None:
        super().__init__(
            f"training diverged at step {step} (epoch {epoch}): {term} is not finite; "
            "lower optim.lr or set trainer.gradient_clip_val"
        )
        self.step, self.epoch, self.term = step, epoch, term

    def __reduce__(self) -> tuple[object, ...]:  # picklable: joblib/submitit send it back
        return type(self), (self.step, self.epoch, self.term)


class DivergenceGuard(L.Callback):
    """Raise `Diverged` when the step's recon/KL terms or the gradient norm are not finite.

    Reads the module's `last_terms` ({name: Tensor} of the step's loss terms, set by the
    LightningModule) and the gradients; one host sync per step (`check_every_n_steps` thins it).
    """

    def __init__(self, check_every_n_steps: int = 1, check_grads: bool = True) -> None:
        if check_every_n_steps < 1:
            raise ValueError(
                f"callbacks.divergence.check_every_n_steps must be >= 1, got {check_every_n_steps}"
            )
        self.every, self.check_grads = check_every_n_steps, check_grads

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._params = [p for p in pl_module.parameters() if p.requires_grad]

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if trainer.global_step % self.every:
            return
        terms: dict[str, Tensor] = dict(getattr(pl_module, "last_terms", None) or {})
        if self.check_grads:
            grads = [p.grad for p in getattr(self, "_params", ()) if p.grad is not None]
            if grads:
                terms["gradient"] = torch.stack(torch._foreach_norm(grads))
        if not terms:
            return
        # one reduction and one host sync: any inf/nan makes the total non-finite
        total = torch.stack([t.sum() for t in terms.values()]).sum()
        if bool(torch.isfinite(total)):
            return
        first_bad = next(name for name, t in terms.items() if not bool(torch.isfinite(t).all()))
        raise Diverged(trainer.global_step, trainer.current_epoch, first_bad)
