"""scripts/bound_spread.py: the spread of the Fig. 2 bound estimate over z draws, checked
against the spread its per-image z variances predict (run on an old run fixture, tiny data)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch

from aevb.runs import load_run
from tests.conftest import REPO

OLD_RUN = Path(__file__).parent / "fixtures" / "run_v0"


def _script():  # noqa: ANN202 -- the module
    spec = importlib.util.spec_from_file_location(
        "bound_spread", REPO / "scripts" / "bound_spread.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_std_over_draws_matches_the_per_image_variances(tmp_path: Path, data_root: Path) -> None:
    run_dir = Path(shutil.copytree(OLD_RUN, tmp_path / "run"))
    config = run_dir / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("root: /tmp/w19/data", f"root: {data_root}"))
    script = _script()
    got = script.spread(run_dir, "last", repeats=60)
    # the truth it estimates: sd of the average of n independent L = 1 estimates
    run = load_run(run_dir, checkpoint=run_dir / "checkpoints" / "last.ckpt")
    run.datamodule.setup("test")
    x = run.datamodule.test_images
    torch.manual_seed(1000)
    draws = torch.stack([script.per_image_elbo(run.model, x) for _ in range(100)])  # [draws, n]
    predicted = float(draws.var(0).sum().sqrt() / len(x))
    assert got["images"] == len(x) == 200
    assert 0.75 * predicted < got["std_z"] < 1.25 * predicted, (got, predicted)  # 60 draws: ~9 %
    assert abs(got["mean"] - float(draws.mean())) < 4 * predicted
    per_image_sd = float(draws.std(1).mean())  # sd over images of one draw's bounds
    assert abs(got["se_images"] - per_image_sd / len(x) ** 0.5) < 0.1 * got["se_images"]
