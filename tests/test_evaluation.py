"""aevb.evaluation: the eval.json record of a run's checkpoint; the memory check on k."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aevb.config import EvalConfig
from aevb.errors import ConfigError
from aevb.evaluation import check_memory, evaluate_run

from .conftest import run_cli, tiny_overrides


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("evaluation")
    run = cwd / "run"
    args = [*tiny_overrides(data_root), "eval.iw_samples=5", "eval.iwae_ks=[1]"]
    proc = run_cli([*args, f"hydra.run.dir={run}"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_the_record_of_the_best_checkpoint_matches_training_time_testing(run_dir) -> None:
    trained = json.loads((run_dir / "metrics.json").read_text())
    record = evaluate_run(run_dir, None, EvalConfig(iw_samples=5, iwae_ks=[1]), "cpu")
    assert record["status"] == "completed" and record["checkpoint"] == "checkpoints/best.ckpt"
    assert record["num_test"] == 200 and record["eval"]["iw_samples"] == 5
    for key in ("test/kl", "test/iwae_k1", "test/nll"):  # analytic, or draws keyed by image
        assert record[key] == pytest.approx(trained[key], abs=1e-4), key
    assert record["gap"] == pytest.approx(-record["test/elbo"] - record["test/nll"])
    assert not (run_dir / "eval.json").exists()  # writing is the command line's job


def test_a_k_whose_log_weights_cannot_fit_is_refused_naming_it() -> None:
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    too_many = free // (1000 * 8) + 1  # [k, 1000] float32 log-weights and a temporary
    with pytest.raises(ConfigError, match="eval.iw_samples") as err:
        check_memory(EvalConfig(iw_samples=too_many, iwae_ks=[1]), 1000, "cpu")
    assert str(too_many) in str(err.value)
    check_memory(EvalConfig(iw_samples=5000, iwae_ks=[1]), 1000, "cpu")  # 40 MB: fits
    check_memory(EvalConfig(iw_samples=0, iwae_ks=[]), 10**9, "cpu")  # no log-weights at all
