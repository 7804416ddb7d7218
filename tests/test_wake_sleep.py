"""Wake-sleep: which parameters each phase moves, the shared ELBO, logged keys, improvement."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from aevb import metrics
from aevb.config import ConfigError, ModelConfig
from aevb.vae import VAE
from aevb.wake_sleep import WakeSleep

from .conftest import two_bars

SHAPE = (1, 4, 4)


def make_model(**kw: object) -> WakeSleep:
    torch.manual_seed(0)
    args = dict(data_shape=SHAPE, latent_dim=2, hidden_dims=[16], activation="tanh",
                optim={"name": "adagrad", "lr": 0.05})  # fmt: skip
    return WakeSleep(**{**args, **kw})


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


def _trainer(steps: int, **kw: object) -> L.Trainer:
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     log_every_n_steps=1, **kw)  # fmt: skip


def test_each_phase_reaches_only_its_own_parameters() -> None:
    model = make_model()
    x = two_bars(50)
    _, wake = model.wake_loss(x)
    wake.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    model.zero_grad(set_to_none=True)
    model.sleep_loss(50).backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_one_training_step_changes_both_parameter_sets() -> None:
    model = make_model()
    enc, dec = _params(model.encoder), _params(model.decoder)
    loader = DataLoader(TensorDataset(two_bars(100), torch.zeros(100)), batch_size=50)
    _trainer(1, limit_val_batches=0).fit(model, loader)
    assert model.global_step == 1 and int(model.samples_seen) == 50
    assert _changed(enc, model.encoder) and _changed(dec, model.decoder)


def test_logged_elbo_is_the_shared_elbo_function() -> None:
    model = make_model()
    x = two_bars(20)
    torch.manual_seed(3)
    wake_terms, _ = model.wake_loss(x)
    torch.manual_seed(3)
    reference = metrics.elbo(x, model.encode(x), model.decode, model.prior)
    torch.manual_seed(3)
    assert torch.allclose(wake_terms.elbo, model.elbo(x))
    assert torch.allclose(wake_terms.elbo, reference.elbo)
    assert isinstance(model, VAE)  # same public API: encode/decode/sample/elbo/log_likelihood


def test_dreams_come_from_the_generative_model() -> None:
    model = make_model()
    z, x = model.dream(7)
    assert z.shape == (7, 2) and x.shape == (7, *SHAPE)
    assert set(x.unique().tolist()) <= {0.0, 1.0}  # Bernoulli samples


def test_objective_improves_on_toy_data_and_logs_vae_keys() -> None:
    data = two_bars(400)
    val = two_bars(200, seed=1)
    model = make_model()
    with torch.no_grad():
        torch.manual_seed(0)
        before = float(model.elbo(val).mean())
    train_loader = DataLoader(TensorDataset(data, torch.zeros(400)), batch_size=50, shuffle=True)
    val_loader = DataLoader(TensorDataset(val, torch.zeros(200)), batch_size=200)
    trainer = _trainer(400)
    trainer.fit(model, train_loader, val_loader)
    with torch.no_grad():
        torch.manual_seed(0)
        after = float(model.elbo(val).mean())
    # the two-prototype data have ~ log 2 + 16 H(0.05) ~ 3.9 nats of entropy; the initial bound
    # is ~ -11 nats (16 log 2 plus a tiny KL), wake-sleep should gain several nats
    assert after > before + 3.0, (before, after)
    logged = set(trainer.callback_metrics)
    for prefix in ("train", "val"):
        assert {f"{prefix}/{k}" for k in ("elbo", "recon", "kl", "loss")} <= logged
    assert abs(float(trainer.callback_metrics["val/elbo"]) - after) < 1.0


def test_config_refuses_kl_shaping_with_wake_sleep() -> None:
    base = dict(architecture="mlp", latent_dim=2, hidden_dims=[8], activation="tanh",
                beta=1.0, samples=1, kl="analytic", algorithm="wake_sleep")  # fmt: skip
    ModelConfig(**base)
    with pytest.raises(
        ConfigError, match=r"model.beta must be 1.0 with model.algorithm=wake_sleep"
    ):
        ModelConfig(**{**base, "beta": 0.5})
    with pytest.raises(ConfigError, match="model.algorithm must be one of"):
        ModelConfig(**{**base, "algorithm": "rws"})
