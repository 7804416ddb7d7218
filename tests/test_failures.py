"""Failures that used to be walls of traceback: one line naming the key or path, exit 2."""

from __future__ import annotations

import shutil
import sys

import pytest
from omegaconf import OmegaConf

from aevb import evaluate, train

from .test_checkpoints import OLD_RUN
from .test_rundir import error_lines, fast


def test_a_deleted_required_key_is_one_line(data_root, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["aevb-train", *fast(data_root), "~seed"])
    with pytest.raises(SystemExit) as exit_:
        train.main()
    (line,) = error_lines(capsys.readouterr().err)
    assert exit_.value.code == 2 and line.startswith("aevb-train: error: seed: ")


def test_aevb_eval_of_a_run_config_missing_a_key_is_one_line(tmp_path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(OLD_RUN, broken)
    cfg = OmegaConf.load(broken / ".hydra" / "config.yaml")
    del cfg["seed"], cfg["data"]["name"]
    OmegaConf.save(cfg, broken / ".hydra" / "config.yaml")
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([str(broken), "eval.iw_samples=0", "eval.iwae_ks=[]"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("aevb-eval: error: ") and "data.name" in err


def test_figures_and_step_size_name_a_metrics_json_that_is_not_an_object(tmp_path) -> None:
    from aevb import figures, step_size

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create({"data": {"name": "mnist"}, "model": {"latent_dim": 2}}),
        run / ".hydra" / "config.yaml",
    )
    (run / "metrics.json").write_text('"completed"')
    (info,) = figures.find_runs([tmp_path])
    assert info.metrics == {}
    with pytest.raises(step_size.StepSizeError, match="metrics.json is not a JSON object"):
        step_size.score(run, None, 1)
