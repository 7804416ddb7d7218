"""aevb.training: the step budget, computed before the Trainer is built."""

from __future__ import annotations

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from aevb.config import Settings
from aevb.data import ImageDataModule
from aevb.train import config_dir
from aevb.training import max_steps, planned_world_size


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"accelerator": "cpu", "devices": 1},
        {"accelerator": "cpu", "devices": 2},
        {"accelerator": "cpu", "devices": 2, "num_nodes": 2},
        {"accelerator": "cpu", "devices": "auto"},
        {"accelerator": "auto", "devices": "auto"},
        {"accelerator": "auto", "devices": 1},
    ],
)
def test_planned_world_size_is_the_trainers(kwargs) -> None:
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    assert planned_world_size(kwargs) == L.Trainer(**kwargs, **quiet).world_size


class _Data:
    def __init__(self, n: int) -> None:
        self.n = n

    def train_size(self) -> int:
        return self.n


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], None),  # no budget: Lightning's max_epochs
        (["budget_samples=1400", "data.batch_size=64"], 2 * 8 + 7),  # N=500: partial steps
        (["budget_samples=1400", "data.batch_size=64", "model=mcem"], (2 * 8 + 7) * 5),
    ],
)
def test_max_steps_counts_partial_steps_and_mcem_updates(overrides, expected) -> None:
    cfg = _compose(["trainer=cpu", *overrides])
    settings = Settings.from_cfg(cfg)
    kwargs = OmegaConf.to_container(cfg.trainer)
    assert max_steps(cfg, settings, _Data(500), kwargs) == expected


@pytest.mark.parametrize("num_train", [None, 123])
def test_train_size_is_known_before_setup(data_root, num_train) -> None:
    """The N of the budget is read before a trainer is attached and equals setup's."""
    dm = ImageDataModule(
        root=str(data_root), download=False, val_size=100, batch_size=64, num_train=num_train
    )
    n = dm.train_size()
    dm.setup("fit")
    assert n == len(dm.train_images) == (num_train or 600 - 100)
