"""Open a finished run directory: its config, best model, data and metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aevb import checkpoints
from aevb.config import Settings
from aevb.data import ImageDataModule
from aevb.epoch_metrics import EvaluationSettings
from aevb.mcem import MonteCarloEM
from aevb.registry import ALGORITHMS
from aevb.rundir import RunDir, run_config_of
from aevb.vae import VAE


@dataclass
class Run:
    """A finished `aevb-train` run: `.cfg`, `.model` (eval mode), `.datamodule`, `.metrics`."""

    path: Path
    cfg: DictConfig
    model: VAE | MonteCarloEM
    datamodule: ImageDataModule
    metrics: dict[str, Any] = field(default_factory=dict)


def checkpoint_of(run_dir: Path) -> Path:
    """The best checkpoint of a run (falls back to last.ckpt)."""
    return RunDir(run_dir).checkpoint()


def load_run(
    run_dir: str | Path,
    map_location: str = "cpu",
    checkpoint: str | Path | None = None,
    evaluation: EvaluationSettings | None = None,
) -> Run:
    """Load a run written by `aevb-train`: the same data (and binarization seeds) and best model.

    `checkpoint` picks another checkpoint of the run (default: `checkpoint_of(run_dir)`);
    `evaluation`, what the model's test epochs compute (a VAE's; MCEM has none). The
    checkpoint is loaded without running code and must match the run's data, model, objective
    and optimizer (`checkpoints.check_identity`); else a one-line `CheckpointError`.
    """
    run_dir = Path(run_dir).resolve()
    run = RunDir(run_dir)
    if not run.is_run():
        raise FileNotFoundError(f"{run_dir} is not an aevb run directory (no {RunDir.CONFIG})")
    cfg = OmegaConf.load(run.config)
    settings = Settings.from_cfg(cfg)
    data_kwargs = settings.datamodule_kwargs()
    root = Path(data_kwargs["root"]).expanduser()
    if not root.is_absolute():  # relative to where the run was launched
        launch = OmegaConf.load(run.hydra_config).hydra.runtime.cwd
        root = Path(launch) / root
    data_kwargs.update(root=str(root), download=False)
    ckpt = Path(checkpoint) if checkpoint is not None else run.checkpoint()
    model_cls = ALGORITHMS[settings.model.algorithm]
    checkpoints.check_identity(cfg, checkpoints.load(ckpt), ckpt, run_config_of(ckpt))
    model = model_cls.load_from_checkpoint(  # evaluation: dropped where __init__ lacks it
        ckpt, map_location=map_location, weights_only=True, evaluation=evaluation
    )
    model.eval()
    metrics_path = run.metrics
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if not isinstance(metrics, dict):
        raise ValueError(
            f"{metrics_path} holds a JSON {type(metrics).__name__}, not an object; restore it "
            "or move it away to open the run without its metrics"
        )
    return Run(run_dir, cfg, model, ImageDataModule(**data_kwargs), metrics)
