"""Every option of every config group under conf/ composes (Hydra's compose API), passes the
schema (`Settings`), and builds: its datamodule on tiny data and its model, through the
registries aevb-train uses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from aevb.config import Settings
from aevb.data import ImageDataModule
from aevb.devices import check_trainer
from aevb.registry import ALGORITHMS
from aevb.train import config_dir

from .test_frey_face import write_frey_mat

CONF = Path(config_dir())
#: groups chosen as `group=option` (in the defaults list of train.yaml)
GROUPS = ("data", "likelihood", "lr_schedule", "model", "optim", "trainer", "logger", "callbacks")
GROUPS += ("hparams_search",)
#: options valid only with another choice (the schema refuses them alone, by design)
PARTNERS = {"data=frey_face": ["likelihood=gaussian"]}  # grey levels: not Bernoulli


def _options() -> list[list[str]]:
    runs = [[f"{g}={f.stem}"] for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
    runs = [[*run, *PARTNERS.get(run[0], [])] for run in runs]
    runs += [[f"+experiment={f.stem}"] for f in sorted((CONF / "experiment").glob("*.yaml"))]
    for data in ("mnist", "frey_face"):  # the paper's per-dataset settings, inside a recipe
        runs.append(["+experiment=paper_fig2_mnist", f"experiment/paper@_global_={data}"])
    runs += [[f"hydra/launcher={f.stem}"] for f in sorted((CONF / "hydra/launcher").glob("*"))]
    return runs


OPTIONS = _options()


def test_every_option_file_is_covered() -> None:
    covered = {o.split("=")[1] for run in OPTIONS for o in run}
    files = {f.stem for f in CONF.glob("**/*.yaml") if f.parent != CONF}
    included = {"step_size_mnist", "step_size_frey_face", "step_size_fig3", "mnist", "frey_face"}
    assert files - covered <= included  # pulled in by the recipes that the options compose


@pytest.fixture(scope="module")
def roots(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    frey = tmp_path_factory.mktemp("frey")
    write_frey_mat(frey, n=60)
    return {"mnist": data_root, "fashion_mnist": data_root, "frey_face": frey}


@pytest.mark.parametrize("overrides", OPTIONS, ids=[" ".join(o) for o in OPTIONS])
def test_option_composes_validates_and_builds(overrides: list[str], roots: dict[str, Path]) -> None:
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", [*overrides, "data.download=false"], return_hydra_config=True)
    settings = Settings.from_cfg(cfg)
    check_trainer(cfg.trainer)
    data = dataclasses.replace(  # the tiny files: few images, the whole training split
        settings.data, root=str(roots[settings.data.name]), val_size=10, num_train=None
    )
    datamodule = ImageDataModule(**dataclasses.asdict(data))
    datamodule.setup("fit")
    n = len(datamodule.train_images)
    model = ALGORITHMS[settings.model.algorithm](**settings.model_kwargs(datamodule.data_shape, n))
    assert sum(p.numel() for p in model.parameters()) > 0
