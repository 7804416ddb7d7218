"""`aevb-step-size`: the paper's step-size selection (best training bound after a probe budget),
the generated recipe table and the recipes reading it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from aevb.config import Settings
from aevb.step_size import (
    Grid,
    Probe,
    Score,
    StepSizeError,
    recipe_grid,
    score,
    select,
    to_markdown,
    to_yaml,
)
from aevb.train import config_dir

from .conftest import run_cli
from .test_frey_face import write_frey_mat


def _score(algo: str, nz: int, lr: float, value: float) -> Score:
    return Score(Probe(algo, nz, lr), value)


def test_select_takes_the_best_training_bound_per_algorithm_and_nz() -> None:
    scores = [
        _score("aevb", 3, 0.01, -180.0), _score("aevb", 3, 0.02, -175.0),
        _score("aevb", 3, 0.1, -math.inf),  # diverged
        _score("wake_sleep", 3, 0.01, -190.0), _score("wake_sleep", 3, 0.02, -200.0),
        _score("wake_sleep", 20, 0.01, -150.0), _score("wake_sleep", 20, 0.02, -150.0),  # tie
    ]  # fmt: skip
    assert select(scores) == {"aevb": {3: 0.02}, "wake_sleep": {3: 0.01, 20: 0.01}}
    with pytest.raises(StepSizeError, match="every step size diverged for aevb Nz=5"):
        select([_score("aevb", 5, 0.1, -math.inf)])


def test_generated_table_drives_the_recipes_lr() -> None:
    grid = Grid("mnist", "model.latent_dim", [3], ["aevb", "wake_sleep"], marginal=False)
    text = to_yaml("paper_fig2_mnist", grid, 1000, {"aevb": {3: 0.02}, "wake_sleep": {3: 0.1}})
    table = OmegaConf.create(text)
    assert table.paper_step_size.probe_samples == 1000
    assert table.paper_step_size.wake_sleep.nz3 == 0.1
    # the committed tables cover every (algorithm, Nz) the Fig. 2 recipes sweep, MNIST Nz = 2 too
    for recipe, extra in (("paper_fig2_mnist", [2]), ("paper_fig2_frey", [])):
        grid = recipe_grid(recipe)
        assert grid.key == "model.latent_dim" and not grid.marginal
        committed = OmegaConf.load(Path(config_dir()) / "experiment" / "paper"
                                   / f"{grid.stem}.yaml").paper_step_size  # fmt: skip
        for algo in grid.algorithms:
            for nz in grid.values + extra:
                with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
                    cfg = compose("train", [f"+experiment={recipe}", f"model.algorithm={algo}",
                                            f"model.latent_dim={nz}"])  # fmt: skip
                lr = Settings.from_cfg(cfg).optim.lr
                assert lr == committed[algo][f"nz{nz}"] and lr in (0.01, 0.02, 0.1)
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", [f"+experiment={recipe}", "optim.lr=0.05"])
        assert Settings.from_cfg(cfg).optim.lr == 0.05  # an explicit step size wins


def test_fig3_is_selected_per_algorithm_and_training_set_size_by_the_marginal_likelihood(
    tmp_path: Path,
) -> None:
    """Fig. 3 sweeps N_train, includes MCEM (no bound) and scores every probe by the Appendix D
    log p(x) of the training points; its table drives the Fig. 3 recipe's step size."""
    grid = recipe_grid("paper_fig3")
    assert (grid.key, grid.values, grid.marginal) == ("data.num_train", [1000, 50000], True)
    assert grid.algorithms == ["aevb", "wake_sleep", "mcem"] and grid.stem == "step_size_fig3"
    probe = grid.probes([0.02])[-1]
    assert probe.name == "mcem_n50000_lr0.02"
    assert probe.overrides == ["model.algorithm=mcem", "data.num_train=50000"]
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "completed", "samples_seen": 100}))
    points = [{"samples": 0, "train_log_px": -543.0}, {"samples": 100, "train_log_px": -150.5}]
    (tmp_path / "marginal_curve.json").write_text(json.dumps({"points": points}))
    assert score(tmp_path, probe, 100, marginal=True) == Score(probe, -150.5)
    chosen = {"aevb": {1000: 0.02, 50000: 0.1}, "mcem": {1000: 0.01, 50000: 0.01}}
    table = OmegaConf.create(to_yaml("paper_fig3", grid, 100, chosen)).paper_fig3_step_size
    assert table.aevb.n50000 == 0.1 and table.mcem.n1000 == 0.01
    text = to_markdown(grid, 100, [Score(probe, -150.5)], chosen)
    assert "| algorithm | N_train |" in text and "log p(x)" in text
    committed = OmegaConf.load(Path(config_dir()) / "experiment" / "paper" / "step_size_fig3.yaml")
    for algo in grid.algorithms:
        for n in grid.values:
            with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
                cfg = compose("train", ["+experiment=paper_fig3", f"model.algorithm={algo}",
                                        f"data.num_train={n}"])  # fmt: skip
            lr = Settings.from_cfg(cfg).optim.lr
            assert lr == committed.paper_fig3_step_size[algo][f"n{n}"] and lr in (0.01, 0.02, 0.1)


def test_an_nz_without_a_selected_step_size_is_refused_in_one_line(tmp_path: Path) -> None:
    proc = run_cli(["+experiment=paper_fig2_mnist", "model.latent_dim=7"], tmp_path, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "no entry nz7 in paper_step_size.aevb" in err
    assert "set optim.lr" in err and not (tmp_path / "outputs").exists()


def test_score_reads_the_last_training_bound_and_divergence(tmp_path: Path) -> None:
    probe = Probe("aevb", 2, 0.1)
    assert probe.name == "aevb_nz2_lr0.1"  # probe dirs of earlier selections keep their names
    assert score(tmp_path, probe, 100) is None  # not run yet
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "completed", "samples_seen": 100}))
    points = [{"samples": 100, "train_elbo": -150.0}, {"samples": 50, "train_elbo": -170.0}]
    (tmp_path / "learning_curve.json").write_text(json.dumps({"points": points}))
    assert score(tmp_path, probe, 100) == Score(probe, -150.0)
    assert score(tmp_path, probe, 200) is None  # short of the budget: run it (resume) again
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"status": "diverged", "diverged_step": 4, "diverged_term": "grad"}))  # fmt: skip
    assert score(tmp_path, probe, 100) == Score(probe, -math.inf, "diverged at step 4 (grad)")


def test_cli_probes_selects_and_writes_table_and_recipe_file(tmp_path: Path) -> None:
    write_frey_mat(tmp_path / "data", n=240)
    conf, table = tmp_path / "step_size.yaml", tmp_path / "table.md"
    args = [
        "paper_fig2_frey", f"data.root={tmp_path / 'data'}", "data.download=false",
        "data.val_size=20", "data.batch_size=20", "model.hidden_dims=[8]", "trainer=cpu",
        "callbacks.learning_curve.start=100",
        "--latent-dims", "2", "--lrs", "0.01,0.1", "--probe-samples", "200", "--jobs", "2",
        "--out", str(tmp_path / "probes"), "--conf", str(conf), "--table", str(table),
    ]  # fmt: skip
    proc = run_cli(args, tmp_path, script="aevb.step_size", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "probes" / "frey_face").iterdir())
    assert runs == [f"{a}_nz2_lr{lr}" for a in ("aevb", "wake_sleep") for lr in ("0.01", "0.1")]
    scores = {}
    for name in runs:
        curve = json.loads((tmp_path / "probes" / "frey_face" / name / "learning_curve.json")
                           .read_text())["points"]  # fmt: skip
        assert curve[-1]["samples"] >= 200
        scores[name] = curve[-1]["train_elbo"]
    chosen = OmegaConf.load(conf).paper_step_size
    for algo in ("aevb", "wake_sleep"):
        best = max(("0.01", "0.1"), key=lambda lr: scores[f"{algo}_nz2_lr{lr}"])
        assert chosen[algo].nz2 == float(best)
    assert "| aevb | 2 |" in table.read_text() and "**" in table.read_text()
    mtime = conf.stat().st_mtime_ns  # a second call skips the finished probes
    again = run_cli(args, tmp_path, script="aevb.step_size", timeout=120)
    assert again.returncode == 0 and OmegaConf.load(conf).paper_step_size == chosen
    assert conf.stat().st_mtime_ns >= mtime
