"""Monte Carlo EM: the exact log p(x) of a toy improves, chains persist and resume, the E-step
hits its acceptance target, settings are validated."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from aevb.config import ConfigError, ModelConfig
from aevb.data import EpochShuffle, TensorLoader
from aevb.mcem import MONITOR, MonteCarloEM

from .conftest import two_bars

SHAPE = (1, 4, 4)


def exact_log_px(model: MonteCarloEM, x: torch.Tensor, half_width: float = 5.0) -> torch.Tensor:
    """log p(x) of a Nz = 2 model by the midpoint rule on a 200 x 200 grid over z."""
    steps = 200
    h = 2 * half_width / steps
    u = -half_width + h * (torch.arange(steps, dtype=torch.float64) + 0.5)
    z = torch.cartesian_prod(u, u)  # [G, 2]
    with torch.no_grad():
        logits = model.decoder(z.float()).reshape(len(z), -1).double()  # [G, P]
    flat = x.reshape(len(x), -1).double()
    log_lik = flat @ torch.nn.functional.logsigmoid(logits).T
    log_lik += (1 - flat) @ torch.nn.functional.logsigmoid(-logits).T  # [B, G]
    log_prior = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
    return torch.logsumexp(log_lik + log_prior, dim=1) + 2 * math.log(h)


def make_model(n: int, **kw: object) -> MonteCarloEM:
    torch.manual_seed(0)
    args = dict(data_shape=SHAPE, latent_dim=2, hidden_dims=[16], activation="tanh",
                init_std=0.1, optim={"name": "adagrad", "lr": 0.05}, num_train=n,
                burn_in=10, eval_points=20)  # fmt: skip
    return MonteCarloEM(**{**args, **kw})


def loader(x: torch.Tensor, batch: int = 50, seed: int = 0) -> TensorLoader:
    """aevb's own loader (seeded per-epoch permutation): MCEM reads the rows of each batch."""
    labels = torch.zeros(len(x), dtype=torch.long)
    return TensorLoader(x, labels, batch, EpochShuffle(len(x), shuffle=True, seed=seed))


def _trainer(steps: int, **kw: object) -> L.Trainer:
    return L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", log_every_n_steps=1,
                     **{"enable_checkpointing": False, **kw})  # fmt: skip


def test_mcem_raises_the_exact_log_likelihood_and_counts_steps() -> None:
    data, held_out = two_bars(200), two_bars(100, seed=1)
    model = make_model(len(data))
    before = float(exact_log_px(model, held_out).mean())
    trainer = _trainer(5 * 80, limit_val_batches=0)  # 80 minibatches, 5 updates each
    trainer.fit(model, loader(data))
    after = float(exact_log_px(model, held_out).mean())
    # ~ log 2 + 16 H(0.05) ~ 3.9 nats of entropy; an untrained decoder sits near 16 log 2 ~ 11
    assert after > before + 3.0, (before, after)
    assert int(model.samples_seen) == 80 * 50 and trainer.global_step == 400
    assert bool(model.chain_visited.all())  # every datapoint's chain ran and was stored
    logged = trainer.callback_metrics
    assert abs(float(logged["train/accept"]) - 0.9) < 0.1  # the tuning rule hits its target
    assert float(logged["train/step_size"]) > 0 and math.isfinite(float(logged["train/log_joint"]))


def test_chains_persist_between_visits_and_only_visited_rows_change() -> None:
    data = two_bars(100)
    model = make_model(len(data))
    _trainer(5 * 1, limit_val_batches=0).fit(model, loader(data))  # one minibatch of 50
    rows = EpochShuffle(100, shuffle=True, seed=0).indices()[:50]
    visited = torch.zeros(100, dtype=torch.bool)
    visited[rows] = True
    assert torch.equal(model.chain_visited, visited)
    assert (model.chain_z[~visited] == 0).all() and (model.chain_z[visited] != 0).any()


def test_checkpoint_holds_plain_tensors_and_resume_continues_the_chains(tmp_path) -> None:
    data = two_bars(100)  # two minibatches per epoch
    model = make_model(len(data))
    trainer = _trainer(-1, max_epochs=2, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, loader(data))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # nothing but tensors, dicts and numbers
    for key in ("chain_z", "chain_log_step", "chain_visited", "samples_seen"):
        assert torch.equal(ckpt["state_dict"][key], getattr(model, key))
    assert ckpt["mcem_generator"].dtype == torch.uint8
    # resuming continues the same chains and noise as an uninterrupted run
    straight = make_model(len(data))
    _trainer(-1, max_epochs=3, limit_val_batches=0).fit(straight, loader(data))
    resumed = make_model(len(data))
    _trainer(-1, max_epochs=3, limit_val_batches=0).fit(resumed, loader(data), ckpt_path=path)
    assert int(resumed.samples_seen) == int(straight.samples_seen) == 300
    assert torch.equal(resumed.chain_z, straight.chain_z)
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(a, b)


def test_validation_and_test_log_the_appendix_d_estimate() -> None:
    data, val = two_bars(100), two_bars(40, seed=1)
    model = make_model(len(data), eval_points=30)
    val_loader = DataLoader(TensorDataset(val, torch.zeros(40)), batch_size=25)
    trainer = _trainer(5 * 2)
    trainer.fit(model, loader(data), val_loader)
    log_px = float(trainer.callback_metrics[MONITOR])
    truth = float(exact_log_px(model, val[:30]).mean())
    assert abs(log_px - truth) < 0.3, (log_px, truth)
    (result,) = trainer.test(model, val_loader, verbose=False)
    assert result["test/nll_hmc"] == pytest.approx(-log_px, abs=1e-6)  # same points and noise


def test_persistent_chains_need_aevbs_loader_and_one_device() -> None:
    data = two_bars(100)
    plain = DataLoader(TensorDataset(data, torch.zeros(100)), batch_size=50)
    with pytest.raises(ValueError, match="model.mcem.persistent must be false"):
        _trainer(5, limit_val_batches=0).fit(make_model(100), plain)
    model = make_model(100, persistent=False)  # fresh chains with burn-in every minibatch
    _trainer(5, limit_val_batches=0).fit(model, plain)
    assert not bool(model.chain_visited.any()) and int(model.samples_seen) == 50


def test_config_validates_mcem_settings() -> None:
    base = dict(architecture="mlp", latent_dim=3, hidden_dims=[8], activation="tanh", beta=1.0,
                samples=1, kl="analytic", algorithm="mcem")  # fmt: skip
    assert ModelConfig(**base).mcem_config().leapfrog_steps == 10  # the paper's defaults
    for mcem, needle in (
        ({"leapfrog_steps": 0}, "model.mcem.leapfrog_steps must be an integer >= 1, got 0"),
        ({"target_accept": 1.5}, "model.mcem.target_accept must be a number in (0, 1)"),
        ({"persistent": "yes"}, "model.mcem.persistent must be true or false"),
        ({"bogus": 1}, "model.mcem.bogus must be one of the known keys"),
    ):
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            ModelConfig(**base, mcem=mcem)
    with pytest.raises(ConfigError, match=r"model.beta must be 1.0 with model.algorithm=mcem"):
        ModelConfig(**{**base, "beta": 0.5})
    with pytest.raises(ConfigError, match=r"model.samples must be 1 with model.algorithm=mcem"):
        ModelConfig(**{**base, "samples": 2})


def test_mcem_refuses_a_learning_rate_schedule_and_gets_no_schedule_argument() -> None:
    from hydra import compose, initialize_config_dir

    from aevb.config import Settings
    from aevb.train import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        plain = compose("train", ["model.algorithm=mcem"])
        scheduled = compose("train", ["model.algorithm=mcem", "lr_schedule=cosine"])
    assert "lr_schedule" not in Settings.from_cfg(plain).model_kwargs((1, 28, 28), 100)
    with pytest.raises(ConfigError, match="lr_schedule must be none for model.algorithm=mcem"):
        Settings.from_cfg(scheduled)
