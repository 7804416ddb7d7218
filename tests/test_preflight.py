"""aevb.preflight: a bad command line is refused in one line before Hydra writes anything."""

from __future__ import annotations

from aevb.config import Settings
from aevb.preflight import check_command_line
from aevb.train import config_dir


def _check(*argv: str) -> str | None:
    return check_command_line(list(argv), config_dir(), "train", validate=Settings.from_cfg)


def test_a_good_command_line_passes() -> None:
    assert _check("model.latent_dim=5", "likelihood=gaussian", "data=frey_face") is None


def test_an_unknown_group_option_lists_the_choices() -> None:
    assert _check("likelihood=poisson") == (
        "likelihood=poisson is not a config option; choose one of: bernoulli, "
        "continuous_bernoulli, gaussian, gaussian_learned, laplace"
    )


def test_an_unknown_key_suggests_the_close_one() -> None:
    problem = _check("model.latent_dims=5")
    assert problem is not None and "\n" not in problem
    assert problem.startswith(
        "model.latent_dims is not a config key; did you mean model.latent_dim?"
    )


def test_a_bad_value_is_the_schemas_one_line() -> None:
    assert _check("optim.name=rmsprop") == (
        "optim.name must be one of ['adagrad', 'adam', 'sgd'], got 'rmsprop'"
    )


def test_a_sweep_is_checked_per_swept_value() -> None:
    assert _check("-m", "model.latent_dim=2,5", "likelihood=gaussian,poisson") is not None
    assert _check("-m", "model.latent_dim=2,5") is None
