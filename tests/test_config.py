"""aevb.config: the schema of a composed config, its one-line refusals, and what it derives."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from aevb.config import ConfigError, Settings, budget_steps
from aevb.train import config_dir


def _settings(*overrides: str) -> Settings:
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return Settings.from_cfg(compose("train", list(overrides)))


def test_budget_steps_counts_partial_last_steps_of_each_epoch() -> None:
    assert budget_steps(1000, 100) == 10  # N unknown: ceil(B / M)
    assert budget_steps(1001, 100) == 11
    # N = 250, M = 100: 3 steps an epoch (100, 100, 50); 600 samples = 2 epochs + 100
    assert budget_steps(600, 100, num_train=250) == 3 + 3 + 1
    # two ranks, 125 images each: 2 steps (2 x 100, then 2 x 25) per epoch of 250 samples
    assert budget_steps(500, 100, num_train=250, world_size=2) == 2 + 2
    assert budget_steps(700, 100, num_train=250, world_size=2) == 2 + 2 + 1
    with pytest.raises(ConfigError, match="budget_samples must be null or a whole number"):
        budget_steps(10.5, 100)


def test_binarize_auto_follows_the_likelihoods_support() -> None:
    assert _settings().data.binarize == "dynamic"  # bernoulli
    assert _settings("likelihood=gaussian").data.binarize == "none"
    with pytest.raises(ConfigError, match="data.binarize must be dynamic or static"):
        _settings("data.binarize=none")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.latent_dim=0", "model.latent_dim must be an integer > 0, got 0"),
        ("model.algorithm=gibbs", "model.algorithm must be one of ['aevb', 'mcem', 'wake_sleep']"),
        ("data.name=svhn", "data.name must be one of ['fashion_mnist', 'frey_face', 'mnist']"),
        ("likelihood.sigma=-1", "likelihood must be valid"),
        ("+likelihood.tau=1", 'likelihood must be valid, got "likelihood=bernoulli: Bernoulli'),
        ("lr_schedule=iwae", None),
        ("+lr_schedule.gamma=0.5", "lr_schedule.gamma must be one of the keys of lr_schedule=none"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(override: str, message: str | None) -> None:
    if message is None:
        _settings(override)
        return
    partner = ["likelihood=gaussian"] if override.startswith("likelihood.sigma") else []
    with pytest.raises(ConfigError) as err:
        _settings(*partner, override)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_model_kwargs_name_the_algorithms_constructor_arguments() -> None:
    aevb = _settings().model_kwargs((1, 28, 28), 100)
    assert aevb["likelihood"]["name"] == "bernoulli" and aevb["lr_schedule"] is None
    assert {"beta", "samples", "kl"} <= set(aevb) and "algorithm" not in aevb
    mcem = _settings("model=mcem", "optim=adagrad").model_kwargs((1, 28, 28), 100)
    assert mcem["num_train"] == 100 and "lr_schedule" not in mcem and "beta" not in mcem
    flat = _settings("model.hidden_dims=[8,4]").hparams()
    assert flat["hidden_dims"] == "8-4" and flat["likelihood"] == "bernoulli"
