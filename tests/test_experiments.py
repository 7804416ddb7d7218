"""The paper recipes (conf/experiment/paper_*): composition with the paper's hyperparameters,
their sweeps, the training-sample budget, the parameter prior and the learning curve."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from aevb.config import ConfigError, Settings, budget_steps
from aevb.learning_curve import LearningCurve, log_grid
from aevb.train import config_dir

from .conftest import run_cli
from .test_frey_face import write_frey_mat

RECIPES = ("paper_fig2_mnist", "paper_fig2_frey", "paper_fig4", "paper_fig5")
PAPER_LR = {0.01, 0.02, 0.1}


def _compose(recipe: str, *extra: str) -> dict:
    """The job config of `+experiment=<recipe>`, as `aevb-train ... --cfg job` prints it."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", [f"+experiment={recipe}", *extra])
    Settings.from_cfg(cfg)  # the composed recipe passes validation
    out = OmegaConf.to_container(cfg, resolve=False)
    out["optim"] = OmegaConf.to_container(cfg.optim, resolve=True)  # lr: the aevb-step-size table
    return out


def _check_paper_common(cfg: dict) -> None:
    assert cfg["data"]["batch_size"] == 100  # M
    model = cfg["model"]
    assert model["architecture"] == "mlp" and model["activation"] == "tanh"
    assert model["samples"] == 1 and model["kl"] == "analytic"  # L = 1, estimator B
    assert model["init_std"] == 0.01
    assert cfg["optim"]["name"] == "adagrad" and cfg["optim"]["lr"] in PAPER_LR
    assert cfg["optim"]["prior_std"] == 1.0 and cfg["optim"]["weight_decay"] == 0.0
    assert cfg["budget_samples"] == 10**8
    curve = cfg["callbacks"]["learning_curve"]
    assert curve["_target_"] == "aevb.learning_curve.LearningCurve"
    assert curve["points_per_decade"] >= 3 and curve["start"] <= 1e4


def _check_mnist(cfg: dict) -> None:
    _check_paper_common(cfg)
    assert cfg["data"]["name"] == "mnist" and cfg["model"]["hidden_dims"] == [500]
    assert cfg["likelihood"]["name"] == "bernoulli"


def _check_frey(cfg: dict) -> None:
    _check_paper_common(cfg)
    assert cfg["data"]["name"] == "frey_face" and cfg["model"]["hidden_dims"] == [200]
    assert cfg["likelihood"] == {"name": "gaussian_learned", "sigma_mode": "decoder",
                                 "init_sigma": 1.0}  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_with_the_papers_hyperparameters(recipe: str) -> None:
    cfg = _compose(recipe)
    (_check_frey if recipe == "paper_fig2_frey" else _check_mnist)(cfg)
    if recipe == "paper_fig4":
        assert cfg["model"]["latent_dim"] == 2 and cfg["model"]["algorithm"] == "aevb"
        frey = _compose(recipe, "experiment/paper@_global_=frey_face")
        _check_frey(frey)
        assert frey["model"]["latent_dim"] == 2


def test_cfg_job_prints_the_recipe(tmp_path: Path) -> None:
    proc = run_cli(["+experiment=paper_fig2_frey", "model.algorithm=wake_sleep", "--cfg", "job"],
                   tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    expected = _compose("paper_fig2_frey", "model.algorithm=wake_sleep")
    assert cfg["optim"]["lr"].startswith("${aevb.lookup:${paper_step_size.")  # per algorithm/Nz
    cfg["optim"]["lr"] = expected["optim"]["lr"]
    _check_frey(cfg)
    assert cfg["model"]["algorithm"] == "wake_sleep"
    assert cfg == expected


def _sweep_params(recipe: str) -> dict[str, str]:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", [f"+experiment={recipe}"], return_hydra_config=True)
    Settings.from_cfg(cfg)  # the composed recipe passes validation
    return dict(cfg.hydra.sweeper.params)


def test_recipe_sweeps_match_the_paper() -> None:
    assert _sweep_params("paper_fig2_mnist") == {
        "model.latent_dim": "3,5,10,20,200",
        "model.algorithm": "aevb,wake_sleep",
    }
    assert _sweep_params("paper_fig2_frey") == {
        "model.latent_dim": "2,5,10,20",
        "model.algorithm": "aevb,wake_sleep",
    }
    assert _sweep_params("paper_fig4") == {"experiment/paper@_global_": "mnist,frey_face"}
    assert _sweep_params("paper_fig5") == {"model.latent_dim": "2,5,10,20"}


def test_budget_and_prior_translate_to_trainer_and_optimizer() -> None:
    assert budget_steps(10**8, 100) == 10**6
    assert budget_steps(250, 100) == 3
    # Frey Face: 1665 training faces = 16 full batches + 65, so 10^7 samples take 6006 epochs
    # (9,999,990 samples) and one more batch: >= the budget, never short of it
    assert budget_steps(10**7, 100, 1665) == 6006 * 17 + 1
    assert budget_steps(10**7, 100, 55000) == 10**5
    for bad in (0, 12.5, "1e8", True):
        with pytest.raises(ConfigError, match="budget_samples must be"):
            budget_steps(bad, 100)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", ["+experiment=paper_fig2_mnist"])
    settings = Settings.from_cfg(cfg)
    optim = settings.model_kwargs((1, 28, 28), num_train=55000)["optim"]
    assert optim["weight_decay"] == pytest.approx(1 / 55000)  # grad of -log N(theta; 0, I) / N
    assert settings.hparams()["prior_std"] == 1.0


def test_log_grid_and_next_point() -> None:
    assert log_grid(1e3, 1e5, 4) == [1000, 1778, 3162, 5623, 10000, 17783, 31623, 56234, 100000]
    curve = LearningCurve(start=1e3, points_per_decade=2)
    assert curve.next_after(0) == pytest.approx(1e3)
    assert curve.next_after(1000) == pytest.approx(1e3 * math.sqrt(10))
    assert curve.next_after(5000) == pytest.approx(1e4)
    with pytest.raises(ValueError, match="points_per_decade"):
        LearningCurve(points_per_decade=0)


def test_frey_recipe_runs_to_its_budget_with_a_log_spaced_curve(tmp_path: Path) -> None:
    write_frey_mat(tmp_path / "data", n=300)  # 150 train (140 after 10 val) / 150 test
    run_dir = tmp_path / "run"
    args = [
        "+experiment=paper_fig2_frey",
        f"data.root={tmp_path / 'data'}",
        "data.download=false",
        "data.val_size=10",
        "data.batch_size=20",
        "model.hidden_dims=[16]",
        "model.latent_dim=2",
        "model.algorithm=wake_sleep",
        "budget_samples=1000",
        "callbacks.learning_curve.start=100",
        "callbacks.learning_curve.points_per_decade=2",
        "trainer=cpu",
        "trainer.check_val_every_n_epoch=1",
        "trainer.enable_progress_bar=false",
        "eval.iw_samples=5",
        "eval.iwae_ks=[1]",
        f"hydra.run.dir={run_dir}",
    ]
    proc = run_cli(args, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 50 and metrics["samples_seen"] == 1000
    assert metrics["hparams"]["algorithm"] == "wake_sleep"
    curve = json.loads((run_dir / "learning_curve.json").read_text())
    assert [p["samples"] for p in curve["points"]] == [100, 320, 1000]
    assert curve["train_points"] == 140 and curve["test_points"] == 150
    # the bound of the fitted model that ignores z (a reference line of the Frey panels)
    assert set(curve["z_ignored"]) == {"train", "test"}
    assert all(math.isfinite(v) for v in curve["z_ignored"].values())
    for p in curve["points"]:
        assert math.isfinite(p["train_elbo"]) and math.isfinite(p["test_elbo"])
    # the last point is the final model: its test bound is the run's test/elbo up to z noise
    assert curve["points"][-1]["test_elbo"] == pytest.approx(metrics["test/elbo"], abs=20)
    events = list(run_dir.glob("events.out.tfevents.*"))
    assert events, "TensorBoard event file missing"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir)).Reload()
    steps = [e.step for e in acc.Scalars("curve/test_elbo")]
    assert steps == [100, 320, 1000]


def test_fig3_recipe_composes_with_the_papers_settings() -> None:
    for algo in ("aevb", "wake_sleep", "mcem"):  # step sizes: aevb-step-size (test_step_size)
        cfg = _compose("paper_fig3", f"model.algorithm={algo}")
        lr = 0.1  # the value selected for every algorithm at N_train = 1000
        assert cfg["data"]["name"] == "mnist" and cfg["data"]["batch_size"] == 100
        assert cfg["model"]["hidden_dims"] == [100] and cfg["model"]["latent_dim"] == 3
        assert cfg["optim"]["name"] == "adagrad" and cfg["optim"]["lr"] == lr
        assert cfg["budget_samples"] == 6 * 10**7
        mcem = cfg["model"]["mcem"]
        assert (mcem["leapfrog_steps"], mcem["target_accept"], mcem["updates"]) == (10, 0.9, 5)
        curve = cfg["callbacks"]["marginal_curve"]
        assert curve["_target_"] == "aevb.marginal_curve.MarginalCurve"
        assert (curve["num_train"], curve["num_test"], curve["num_samples"]) == (1000, 1000, 50)
        assert curve["leapfrog_steps"] == 4 and cfg["callbacks"]["learning_curve"] is None
    assert _sweep_params("paper_fig3") == {
        "data.num_train": "1000,50000",
        "model.algorithm": "aevb,wake_sleep,mcem",
    }


@pytest.fixture(scope="module")
def fig3_sweep(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Fig. 3 recipe, all three algorithms, 400 training samples each on tiny data."""
    tmp = tmp_path_factory.mktemp("fig3")
    sweep = tmp / "sweep"
    args = ["-m", "+experiment=paper_fig3", f"data.root={data_root}", "data.download=false",
            "data.val_size=100", "data.batch_size=50", "data.eval_batch_size=100",
            "data.num_train=200", "model.algorithm=aevb,wake_sleep,mcem",
            "optim.lr=0.1",  # step sizes are selected for N_train in {1000, 50000} only
            "model.hidden_dims=[16]", "budget_samples=400", "trainer=cpu",
            "trainer.val_check_interval=6",  # > 4 batches per epoch, as the recipe's 10^4
            "trainer.enable_progress_bar=false",
            "eval.iw_samples=0", "eval.iwae_ks=[]", "model.mcem.eval_points=10",
            "model.mcem.burn_in=5", "callbacks.marginal_curve.every_samples=200",
            "callbacks.marginal_curve.num_train=20", "callbacks.marginal_curve.num_test=20",
            "callbacks.marginal_curve.num_samples=20", "callbacks.marginal_curve.burn_in=20",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = run_cli(args, tmp, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def test_fig3_recipe_runs_each_algorithm_with_a_marginal_curve(fig3_sweep: Path) -> None:
    from aevb.evaluate import evaluate

    jobs = sorted(p for p in fig3_sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(jobs) == 3
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        algorithm = metrics["hparams"]["algorithm"]
        assert metrics["status"] == "completed" and metrics["samples_seen"] == 400, algorithm
        curve = json.loads((job / "marginal_curve.json").read_text())
        assert [p["samples"] for p in curve["points"]] == [0, 200, 400]
        assert all(math.isfinite(p["test_log_px"]) for p in curve["points"])
        assert not (job / "learning_curve.json").exists()
        if algorithm == "mcem":  # 5 optimiser steps per minibatch; no bound: the estimate
            assert metrics["global_step"] == 5 * 8 and math.isfinite(metrics["test/nll_hmc"])
            assert metrics["best_val/log_px_hmc"] is not None and "test/elbo" not in metrics
            assert metrics["hparams"]["mcem.leapfrog_steps"] == 10
            record = evaluate(job, ["eval.marginal=hmc", "eval.hmc_points=10"])
            assert record["hmc_points"] == 10 and math.isfinite(record["test/nll_hmc"])
        else:
            assert metrics["global_step"] == 8 and math.isfinite(metrics["test/elbo"])
