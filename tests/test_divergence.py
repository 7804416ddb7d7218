"""aevb.divergence: the guard names the first non-finite term and its step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from aevb.divergence import DivergenceGuard
from aevb.errors import Diverged


def _step(guard: DivergenceGuard, trainer: SimpleNamespace, recon: float, kl: float) -> None:
    module = SimpleNamespace(last_terms={"recon": torch.tensor([recon]), "kl": torch.tensor([kl])})
    guard.on_before_optimizer_step(trainer, module, None)  # type: ignore[arg-type]
    trainer.global_step += 1


def test_raises_at_the_first_non_finite_term_naming_step_and_term() -> None:
    guard = DivergenceGuard(check_every_n_steps=1, check_grads=False)
    trainer = SimpleNamespace(global_step=0, current_epoch=2, world_size=1)
    _step(guard, trainer, -100.0, 3.0)
    with pytest.raises(Diverged) as err:
        _step(guard, trainer, -100.0, float("nan"))
    assert (err.value.step, err.value.epoch, err.value.term) == (1, 2, "kl")


def test_checking_every_n_steps_still_names_the_first_bad_step() -> None:
    guard = DivergenceGuard(check_every_n_steps=4, check_grads=False)
    trainer = SimpleNamespace(global_step=1, current_epoch=0, world_size=1)
    _step(guard, trainer, float("inf"), 1.0)  # step 1: not checked yet
    _step(guard, trainer, float("nan"), float("nan"))  # step 2
    _step(guard, trainer, 0.0, 0.0)  # step 3
    with pytest.raises(Diverged) as err:
        _step(guard, trainer, 0.0, 0.0)  # step 4: checked
    assert (err.value.step, err.value.term) == (1, "recon")


def test_finite_steps_pass_and_bad_settings_are_refused() -> None:
    guard = DivergenceGuard(check_grads=False)
    trainer = SimpleNamespace(global_step=0, current_epoch=0, world_size=1)
    for _ in range(3):
        _step(guard, trainer, -1.0, 1.0)
    guard.check(trainer)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="check_every_n_steps must be >= 1 or null \\(auto\\), got 0"
    ):
        DivergenceGuard(check_every_n_steps=0)


@pytest.mark.parametrize("every", [1, 3])
def test_a_non_finite_gradient_is_named_after_finite_terms(every: int) -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.tensor([0.5, float("inf"), 1.0])
    guard = DivergenceGuard(check_every_n_steps=every)
    guard._params = [weight]
    trainer = SimpleNamespace(global_step=3, current_epoch=1, world_size=1)
    module = SimpleNamespace(last_terms={"recon": torch.tensor([-5.0]), "kl": torch.tensor([1.0])})
    with pytest.raises(Diverged) as err:
        guard.on_before_optimizer_step(trainer, module, None)  # type: ignore[arg-type]
    assert (err.value.step, err.value.term) == (3, "gradient")
    weight.grad = torch.tensor([0.5, 2.0, 1.0])  # finite: the next step passes
    module.last_terms["kl"] = torch.tensor([float("nan")])
    fresh = DivergenceGuard(check_every_n_steps=every)
    fresh._params = [weight]
    with pytest.raises(Diverged) as err:
        fresh.on_before_optimizer_step(trainer, module, None)  # type: ignore[arg-type]
    assert err.value.term == "kl"
