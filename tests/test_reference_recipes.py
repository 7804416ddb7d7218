"""The reference recipes (conf/experiment/reference_*, docs/reference-results.md): composition
with the published setups, and a few steps of each through the console script on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aevb.config import Settings
from aevb.lr_schedules import iwae_epochs
from aevb.train import config_dir

from .conftest import run_cli


def _compose(recipe: str) -> dict:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", [f"+experiment={recipe}"])
    Settings.from_cfg(cfg)  # passes validation as committed
    groups = ("data", "model", "likelihood", "optim", "lr_schedule", "trainer", "eval")
    return {g: OmegaConf.to_container(cfg[g], resolve=True) for g in groups}


def test_rezende2015_recipe_is_pythaes_setup() -> None:
    cfg = _compose("reference_rezende2015")
    data, model, optim = cfg["data"], cfg["model"], cfg["optim"]
    assert (data["name"], data["binarize"], data["batch_size"]) == ("mnist", "static", 100)
    assert data["val_size"] == 10000  # 50k train / 10k val
    assert (model["hidden_dims"], model["activation"], model["latent_dim"]) == ([400], "relu", 40)
    assert model["samples"] == 1 and model["init_std"] is None and model["algorithm"] == "aevb"
    assert cfg["likelihood"]["name"] == "bernoulli"
    assert (optim["name"], optim["lr"], optim["weight_decay"]) == ("adam", 1e-4, 0.0)
    assert "betas" not in optim and "eps" not in optim  # torch's defaults, as pythae
    assert cfg["lr_schedule"] == {"name": "multistep", "interval": "epoch",
                                  "milestones": [200, 350, 500, 750, 1000],
                                  "gamma": pytest.approx(10 ** (-1 / 5), rel=1e-15)}  # fmt: skip
    assert cfg["trainer"]["max_epochs"] == 500 and cfg["eval"]["iw_samples"] == 200


def test_iwae_recipe_is_burda_et_al_table_1_vae() -> None:
    cfg = _compose("reference_iwae_vae")
    data, model, optim = cfg["data"], cfg["model"], cfg["optim"]
    assert (data["name"], data["binarize"], data["batch_size"]) == ("mnist", "dynamic", 20)
    assert (model["hidden_dims"], model["activation"], model["latent_dim"]) == (
        [200, 200],
        "tanh",
        50,
    )
    assert model["samples"] == 1 and model["algorithm"] == "aevb"
    assert (optim["name"], optim["lr"]) == ("adam", 1e-3)
    assert (optim["betas"], optim["eps"]) == ([0.9, 0.999], 1e-4)
    assert cfg["lr_schedule"] == {"name": "iwae", "interval": "epoch", "stages": 8}
    assert cfg["trainer"]["max_epochs"] == iwae_epochs(8) == 3280  # ends with the last stage
    assert cfg["eval"]["iw_samples"] == 5000


TINY = {
    # 500 train images / batch 100 = 5 steps per epoch; the first milestone after epoch 0
    "reference_rezende2015": ["lr_schedule.milestones=[1]"],
    # 500 / batch 20 = 25 steps per epoch; 2 stages: epoch 0 at 1e-3, epoch 1 at 1e-3 * 10^(-1/7)
    "reference_iwae_vae": ["lr_schedule.stages=2", "model.hidden_dims=[16,16]"],
}


@pytest.mark.parametrize("recipe", sorted(TINY))
def test_recipe_runs_a_few_steps(data_root: Path, tmp_path: Path, recipe: str) -> None:
    run_dir = tmp_path / "run"
    args = [
        f"+experiment={recipe}",
        f"data.root={data_root}",
        "data.download=false",
        "data.val_size=100",
        "trainer=cpu",
        "trainer.max_epochs=2",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=5",
        "trainer.enable_progress_bar=false",
        "eval.iw_samples=5",
        "eval.iwae_ks=[1]",
        *TINY[recipe],
        f"hydra.run.dir={run_dir}",
    ]
    proc = run_cli(args, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps_per_epoch = {"reference_rezende2015": 5, "reference_iwae_vae": 25}[recipe]
    assert metrics["status"] == "completed" and metrics["global_step"] == 2 * steps_per_epoch
    assert metrics["hparams"]["lr_schedule"] == _compose(recipe)["lr_schedule"]["name"]
    assert -800 < metrics["test/elbo"] < 0 and metrics["test/nll"] > 0
    lr = {e.step: e.value for e in EventAccumulator(str(run_dir)).Reload().Scalars("train/lr")}
    base = 1e-4 if recipe == "reference_rezende2015" else 1e-3
    gamma = 10 ** (-1 / 5) if recipe == "reference_rezende2015" else 10 ** (-1 / 7)
    assert lr[0] == pytest.approx(base, rel=1e-6)  # float32 in the event file
    assert lr[steps_per_epoch] == pytest.approx(base * gamma, rel=1e-6)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    if recipe == "reference_iwae_vae":
        assert tuple(group["betas"]) == (0.9, 0.999) and group["eps"] == 1e-4
    assert group["lr"] == pytest.approx(base * gamma, rel=1e-12)
