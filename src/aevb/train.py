"""`aevb-train`: the Hydra app that trains, validates and tests a VAE and writes a run dir.

Run dir (Hydra's output dir): .hydra/ (resolved config), TensorBoard event files,
checkpoints/{best,last}.ckpt, metrics.json (test metrics of the best checkpoint).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aevb import checkpoints, signals
from aevb.atomic import describe_os_error, write_json_atomic
from aevb.callbacks import log_hparams
from aevb.config import Settings, budget_steps
from aevb.data import ImageDataModule
from aevb.devices import check_accelerator, check_trainer, runtime_record
from aevb.errors import CheckpointError, ConfigError, DataError, Diverged
from aevb.hparams import override_values
from aevb.mcem import MONITOR as MCEM_MONITOR
from aevb.mcem import MonteCarloEM
from aevb.numerics import configure_numerics
from aevb.preflight import check_command_line
from aevb.registry import ALGORITHMS
from aevb.rundir import (  # noqa: F401 -- RESUME: the `resume` values
    RESUME,
    RunDir,
    is_secondary_rank,
    resume_checkpoint,
    run_config_of,
)
from aevb.threads import apply_thread_share
from aevb.vae import EvaluationSettings

log = logging.getLogger("aevb.train")


def config_dir() -> str:
    """conf/ inside an installed wheel (aevb/conf) or at the root of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"aevb configs not found next to {here} nor at {here.parents[1]}")


def _instantiate_all(node: DictConfig | None) -> list[Any]:
    if node is None:
        return []
    if "_target_" in node:
        return [hydra.utils.instantiate(node)]
    return [hydra.utils.instantiate(v) for v in node.values() if v is not None and "_target_" in v]


def _checkpoint_callback(trainer: L.Trainer) -> L.pytorch.callbacks.ModelCheckpoint | None:
    return trainer.checkpoint_callback


def _as_floats(results: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(v) for r in results for k, v in r.items()}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, validate and test one configuration; returns the dict written to metrics.json."""
    settings = Settings.from_cfg(cfg)  # raises ConfigError before any work
    check_trainer(cfg.trainer)
    check_accelerator(cfg.trainer.get("accelerator"))  # here, not in preflight: a login node
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    apply_thread_share(HydraConfig.get().launcher)  # a sweep job's share of the cores
    configure_numerics()  # TF32 training matmuls, flushed subnormals (as aevb-eval)
    # epoch metrics are summed over ranks with strategy.reduce before logging (VAE._log_epoch):
    # Lightning's advice to add sync_dist=True does not apply
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*distributed setting.*")
    L.seed_everything(cfg.seed, workers=False, verbose=False)

    datamodule = ImageDataModule(**settings.datamodule_kwargs())
    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    stop = signals.StopOnSignal()  # SIGINT/SIGTERM: finish the batch, write last.ckpt, stop
    # null means Lightning's default, except for check_val_every_n_epoch: null there means
    # validation every val_check_interval batches across epoch ends (Fig. 3's 10^4-step grid)
    trainer_kwargs = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer).items()
        if v is not None or k == "check_val_every_n_epoch"
    }
    if cfg.get("budget_samples") is not None:  # the paper's x-axis: training samples evaluated
        steps = budget_steps(cfg.budget_samples, settings.data.batch_size)
        trainer_kwargs.update(max_steps=steps, max_epochs=-1)
    trainer = L.Trainer(
        **trainer_kwargs,
        logger=loggers or False,
        callbacks=[*callbacks, stop],
        plugins=[checkpoints.AtomicCheckpointIO(checkpoints.identity(cfg))],
        default_root_dir=str(run_dir),
    )
    check_ddp_launch(trainer)
    datamodule.trainer = trainer
    if trainer.is_global_zero:
        datamodule.prepare_data()
    datamodule.setup("fit")
    if cfg.get("budget_samples") is not None:  # now exact: N and the ranks are known
        n_train, world = len(datamodule.train_images), trainer.world_size
        steps = budget_steps(cfg.budget_samples, settings.data.batch_size, n_train, world)
        trainer.fit_loop.epoch_loop.max_steps = steps  # what Trainer(max_steps=...) sets
    model_cls = ALGORITHMS[settings.model.algorithm]
    model = model_cls(**settings.model_kwargs(datamodule.data_shape, len(datamodule.train_images)))
    if isinstance(model, MonteCarloEM):  # no bound: best.ckpt by the Appendix D estimate
        if cfg.get("budget_samples") is not None:  # max_steps counts optimiser steps
            trainer.fit_loop.epoch_loop.max_steps = steps * model.optimizer_steps_per_batch
        if trainer.checkpoint_callback is not None:
            trainer.checkpoint_callback.monitor = MCEM_MONITOR
    monitor = trainer.checkpoint_callback.monitor if trainer.checkpoint_callback else "val/elbo"
    model.evaluation = EvaluationSettings(**settings.eval.test_evaluation())  # test/nll, ...

    ckpt_path = cfg.get("ckpt_path") or resume_checkpoint(cfg.get("resume", "never"), run_dir)
    if ckpt_path is not None:
        check_checkpoint(ckpt_path, model, cfg)
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except Diverged as err:
        _record_divergence(err, trainer, model, settings, run_dir, time.perf_counter() - start)
        raise
    stop.raise_if_stopped()  # a signal ended the fit: last.ckpt is written, skip testing
    fit_seconds = time.perf_counter() - start
    samples_seen = int(model.samples_seen)  # before testing a checkpoint reloads the buffer

    ckpt = _checkpoint_callback(trainer)
    best_path = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    if best_path is not None and ckpt.best_model_score is None:  # resumed in a moved run dir:
        best_path = None  # Lightning kept the path but not its score; test the final weights
    final_val = trainer.callback_metrics.get(monitor)
    final_is_best = (
        best_path is None
        or final_val is None
        or math.isclose(float(ckpt.best_model_score), float(final_val), rel_tol=0, abs_tol=1e-6)
    )
    metrics: dict[str, Any] = {"status": "completed"}
    if not final_is_best:  # test the final weights too, under their own prefix
        model.test_prefix = "test_final"
        metrics.update(_as_floats(trainer.test(model, datamodule=datamodule, verbose=False)))
        model.test_prefix = "test"
    metrics.update(
        _as_floats(trainer.test(model, datamodule=datamodule, ckpt_path=best_path, verbose=False))
    )
    metrics.update(
        {
            "best_checkpoint": RunDir(run_dir).relative(best_path) if best_path else None,
            f"best_{monitor}": float(ckpt.best_model_score) if best_path else None,
            "final_is_best": final_is_best,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "samples_seen": samples_seen,
            "wall_time_s": round(time.perf_counter() - start, 3),
            "fit_time_s": round(fit_seconds, 3),
            "hparams": settings.hparams(),
            **runtime_record(trainer),
        }
    )
    final = {
        k: v
        for k, v in metrics.items()
        if (k.startswith("test") or k == f"best_{monitor}") and isinstance(v, float)
    }
    hydra_cfg = HydraConfig.get()  # HParams tab: the run's own overrides are columns too
    params = {**settings.hparams(), **override_values(hydra_cfg.overrides.task)}
    multirun = hydra_cfg.mode == RunMode.MULTIRUN  # the sweep declares the columns (SweepHParams)
    log_hparams(loggers, params, final, step=trainer.global_step, declare=not multirun)
    if trainer.is_global_zero:
        write_json_atomic(RunDir(run_dir).metrics, metrics)
        print(_summary(metrics, run_dir))
    return metrics


def check_ddp_launch(trainer: L.Trainer) -> None:
    """Refuse DDP whose ranks Lightning would start itself inside a multirun.

    Lightning starts ranks 1.. by re-running this process's command line, which in a multirun
    is the whole sweep. Under SLURM (or torchrun) the ranks are started outside: fine.
    """
    if trainer.world_size <= 1 or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    env = getattr(trainer.strategy, "cluster_environment", None)
    if env is None or not env.creates_processes_externally:
        raise ConfigError(
            "trainer",
            "a single-process trainer inside a local multirun: DDP ranks started by Lightning "
            "would re-run the whole sweep; sweep DDP jobs with hydra/launcher=slurm (SLURM "
            "starts one task per GPU, docs/sweeps.md) or launch one aevb-train per config",
            f"{trainer.world_size} processes",
        )


def check_checkpoint(path: str, model: L.LightningModule, cfg: DictConfig | None = None) -> None:
    """Refuse a missing, unreadable, unsafe or foreign `ckpt_path` in one line, before any
    training: loaded without running code, of this config's data/model/objective/optimizer."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            "ckpt_path", "an existing checkpoint file (e.g. <run>/checkpoints/last.ckpt)", path
        )
    try:
        ckpt = checkpoints.load(file)
        if cfg is not None:
            checkpoints.check_identity(cfg, ckpt, path, run_config_of(path))
    except CheckpointError as err:
        raise ConfigError("ckpt_path", f"a usable checkpoint ({err})", path) from err
    if "loops" not in ckpt:
        raise ConfigError(
            "ckpt_path", "a Lightning training checkpoint written by aevb-train", path
        )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
        raise ConfigError(
            "ckpt_path", f"a checkpoint of the configured model ({detail[:160]})", path
        ) from err


def _record_divergence(
    err: Diverged,
    trainer: L.Trainer,
    model: L.LightningModule,
    settings: Settings,
    run_dir: Path,
    seconds: float,
) -> None:
    """metrics.json with status `diverged`: where, which term, and the last good checkpoints."""
    if not trainer.is_global_zero:
        return
    run = RunDir(run_dir)
    last = run.last_checkpoint
    write_json_atomic(
        run.metrics,
        {
            "status": "diverged",
            "error": str(err),
            "diverged_step": err.step,
            "diverged_epoch": err.epoch,
            "diverged_term": err.term,
            "last_checkpoint": run.relative(last) if last.is_file() else None,
            "samples_seen": int(model.samples_seen),
            "wall_time_s": round(seconds, 3),
            "hparams": settings.hparams(),
        },
    )


def _record_interrupted(err: signals.Interrupted, run_dir: Path) -> None:
    """metrics.json with status `interrupted`: the signal and the checkpoint to resume from."""
    if is_secondary_rank():
        return
    run = RunDir(run_dir)
    last = run.last_checkpoint
    record = {"status": "interrupted", "error": str(err), "signal": err.name}
    try:  # best effort: the exit status says interrupted anyway
        step = int(checkpoints.load(last).get("global_step", -1)) if last.is_file() else None
        record.update(last_checkpoint=run.relative(last) if step is not None else None)
        write_json_atomic(run.metrics, {**record, "last_checkpoint_step": step})
    except (OSError, CheckpointError) as problem:
        log.warning("metrics.json not written: %s", problem)


def _summary(metrics: dict[str, Any], run_dir: Path) -> str:
    keys = [k for k in metrics if k.startswith("test/")]
    parts = [f"{k}={metrics[k]:.3f}" for k in sorted(keys)]
    return (
        f"final test metrics ({metrics['best_checkpoint']}): "
        + "  ".join(parts)
        + f"\nsamples_seen={metrics['samples_seen']}  wall_time_s={metrics['wall_time_s']:.1f}"
        + f"\nrun dir: {run_dir}"
    )


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _app(cfg: DictConfig) -> float | None:
    worker = signals.in_worker()  # a joblib worker: its result goes back to the launcher
    try:
        if worker and (signum := signals.worker_stopped()) is not None:
            raise signals.Interrupted(signum, "the sweep was stopped before this job started")
        with signals.raising():
            metrics = train(cfg)
    except signals.Interrupted as err:  # a sweep stops too: its summary says `interrupted`
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        _record_interrupted(err, run_dir)
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
