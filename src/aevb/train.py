"""`aevb-train`: the command line. Checks it, composes it and hands it to Hydra.

This module imports only Hydra, OmegaConf and aevb's light modules (config schema, registry,
errors, signals), so `--help`, `--cfg job` and a refused command line answer before torch and
Lightning load. The training job itself, `aevb.training.train`, is imported when a job runs.

Run dir (Hydra's output dir): .hydra/ (resolved config), TensorBoard event files,
checkpoints/{best,last}.ckpt, metrics.json (test metrics of the best checkpoint).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from aevb import signals
from aevb.atomic import describe_os_error
from aevb.compiling import compile_settings
from aevb.config import Settings
from aevb.devices import check_trainer  # also registers the SLURM launcher's resolvers
from aevb.errors import ConfigError, DataError, Diverged
from aevb.preflight import app_help, check_command_line
from aevb.step_groups import check_steps_per_call

#: names kept importable from here that live in heavy modules (loaded on first use)
_LAZY = {
    "train": "aevb.training",
    "check_checkpoint": "aevb.training",
    "check_ddp_launch": "aevb.training",
    "resume_checkpoint": "aevb.rundir",
    "RESUME": "aevb.rundir",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aevb.train' has no attribute {name!r}")


def config_dir() -> str:
    """conf/ inside an installed wheel (aevb/conf) or at the root of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"aevb configs not found next to {here} nor at {here.parents[1]}")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _app(cfg: DictConfig) -> float | None:
    """The function Hydra runs for each job (a joblib launcher pickles it): the training job,
    and its failures as one line and an exit status."""
    # torch, Lightning: only when a job runs; before a worker looks for a stop (below), so that
    # a signal that arrives while they load is not missed
    from aevb.training import record_interrupted, train

    worker = signals.in_worker()  # a joblib worker: its result goes back to the launcher
    try:
        if worker and (signum := signals.worker_stopped()) is not None:
            raise signals.Interrupted(signum, "the sweep was stopped before this job started")
        with signals.raising():
            metrics = train(cfg)
    except signals.Interrupted as err:  # a sweep stops too: its summary says `interrupted`
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        record_interrupted(err, run_dir)
        print(
            f"aevb-train: {err}; resume with resume=auto hydra.run.dir={run_dir}",
            file=sys.stderr,
        )
        if worker:  # let the launcher collect the other jobs; it exits 130/143 after them
            signals.worker_stopped(err.signum)
            return None
        sys.exit(err.exit_code)
    except (ConfigError, DataError, ValueError, Diverged, OSError, OmegaConfBaseException) as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN or _full_error():
            raise  # multirun: Hydra records the failed job and the sweep goes on
        text = describe_os_error(err) if isinstance(err, OSError) else str(err)
        if isinstance(err, OmegaConfBaseException):  # e.g. a required key deleted with ~key
            text = f"{err.full_key}: {str(err).splitlines()[0]}; set it (e.g. in conf/train.yaml)"
        print(f"aevb-train: error: {text}", file=sys.stderr)
        sys.exit(3 if isinstance(err, Diverged) else 2)
    return metrics.get("best_val/elbo")


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _validate(cfg: DictConfig) -> None:
    """Every check that needs no data or model: values (Settings) and that ckpt_path exists."""
    check_steps_per_call(cfg)  # torch-free checks first
    compile_settings(cfg)
    Settings.from_cfg(cfg)
    check_trainer(cfg.trainer)
    path = cfg.get("ckpt_path")
    if path is not None and not Path(path).is_file():
        raise ConfigError(
            "ckpt_path", "an existing checkpoint file (e.g. <run>/checkpoints/last.ckpt)", path
        )


def main() -> None:
    """Console script entry point (`aevb-train`): a one-line refusal of a bad command line
    (unknown group option or key, invalid value) before Hydra creates anything, then the app."""
    help_text = app_help(sys.argv[1:], config_dir(), "train", task_name="train")
    if help_text is not None:  # Hydra's text, in a fraction of Hydra's time
        print(help_text)
        return
    problem = None
    if not _full_error():  # HYDRA_FULL_ERROR=1: let Hydra show its full report
        problem = check_command_line(sys.argv[1:], config_dir(), "train", validate=_validate)
    if problem:
        print(f"aevb-train: error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:  # also while Hydra sets up, before train() starts; joblib workers get the signal
        with signals.stopping_sweep() as stop:
            _app()
    except signals.Interrupted as err:
        print(f"aevb-train: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    if stop.exit_code is not None:
        print(f"aevb-train: sweep {stop}", file=sys.stderr)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
