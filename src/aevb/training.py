"""The training job of `aevb-train`: build -> fit -> record one configuration in its run dir.

`aevb.train` (the command line) imports this module only when a job runs. Run dir (Hydra's
output dir): .hydra/ (resolved config), TensorBoard event files, checkpoints/{best,last}.ckpt,
metrics.json (test metrics of the best checkpoint, or why the run stopped).

`StopOnSignal` is the Lightning half of `aevb.signals`: during training, the first
SIGINT/SIGTERM finishes the current batch and stops the fit (`trainer.should_stop`), so the
optimizer step is never cut in half and last.ckpt is written; a second signal raises
`Interrupted` at once.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.accelerators import (
    AcceleratorRegistry,
    CUDAAccelerator,
    MPSAccelerator,
)
from omegaconf import DictConfig, OmegaConf

from aevb import checkpoints, signals
from aevb.atomic import write_json_atomic
from aevb.callbacks import log_hparams
from aevb.compiling import compile_settings, compile_training
from aevb.config import Settings, budget_steps
from aevb.data import ImageDataModule
from aevb.devices import check_accelerator, check_trainer, runtime_record
from aevb.errors import CheckpointError, ConfigError, Diverged
from aevb.hparams import override_values
from aevb.mcem import MONITOR as MCEM_MONITOR
from aevb.mcem import MonteCarloEM
from aevb.numerics import configure_numerics
from aevb.registry import ALGORITHMS
from aevb.rundir import RunDir, is_secondary_rank, resume_checkpoint, run_config_of
from aevb.signals import SIGNALS, Interrupted
from aevb.step_groups import CHECKPOINT_KEY, check_steps_per_call
from aevb.threads import apply_thread_share

log = logging.getLogger("aevb.train")  # the name its log lines had before the split


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
    """Fit, validate and test one configuration (build -> fit -> record); returns the dict
    written to metrics.json."""
    settings = Settings.from_cfg(cfg)  # raises ConfigError before any work
    check_trainer(cfg.trainer)
    k = check_steps_per_call(cfg)
    compile_mode, compile_backend = compile_settings(cfg)
    check_accelerator(cfg.trainer.get("accelerator"))  # here, not in preflight: a login node
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    apply_thread_share(HydraConfig.get().launcher)  # a sweep job's share of the cores
    configure_numerics()  # TF32 training matmuls, flushed subnormals (as aevb-eval)
    # epoch metrics are summed over ranks with strategy.reduce before logging (aevb.epoch_metrics):
    # Lightning's advice to add sync_dist=True does not apply
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*distributed setting.*")
    L.seed_everything(cfg.seed, workers=False, verbose=False)

    # build
    datamodule = ImageDataModule(**settings.datamodule_kwargs(), steps_per_call=k)
    loggers = _instantiate_all(cfg.get("logger"))
    stop = StopOnSignal()  # SIGINT/SIGTERM: finish the batch, write last.ckpt, stop
    # null means Lightning's default, except for check_val_every_n_epoch: null there means
    # validation every val_check_interval batches across epoch ends (Fig. 3's 10^4-step grid)
    trainer_kwargs = {
        k: v
        for k, v in OmegaConf.to_container(cfg.trainer).items()
        if v is not None or k == "check_val_every_n_epoch"
    }
    steps = max_steps(cfg, settings, datamodule, trainer_kwargs)
    if steps is not None:  # the paper's x-axis: training samples evaluated
        trainer_kwargs.update(max_steps=steps, max_epochs=-1)
    trainer = L.Trainer(
        **trainer_kwargs,
        logger=loggers or False,
        callbacks=[*_instantiate_all(cfg.get("callbacks")), stop],
        plugins=[checkpoints.AtomicCheckpointIO({**checkpoints.identity(cfg), CHECKPOINT_KEY: k})],
        default_root_dir=str(run_dir),
    )
    if steps is not None and trainer.world_size != planned_world_size(trainer_kwargs):
        raise ConfigError(  # budget_samples counts the samples of every process
            "trainer.devices",
            f"devices that resolve to the {trainer.world_size} processes the trainer runs, "
            "before it is built, with budget_samples",
            trainer_kwargs.get("devices"),
        )
    if k > 1 and trainer.world_size > 1:  # DDP syncs gradients in its forward: once per call
        raise ConfigError("steps_per_call", f"1 with {trainer.world_size} processes (DDP)", k)
    check_ddp_launch(trainer)
    datamodule.trainer = trainer
    datamodule.setup("fit")
    model_cls = ALGORITHMS[settings.model.algorithm]
    model = model_cls(**settings.model_kwargs(datamodule.data_shape, len(datamodule.train_images)))
    model.automatic_optimization = model.automatic_optimization and k == 1  # aevb.step_groups
    compile_training(model, compile_mode, compile_backend)
    if isinstance(model, MonteCarloEM) and trainer.checkpoint_callback is not None:
        trainer.checkpoint_callback.monitor = MCEM_MONITOR  # no bound: the Appendix D estimate
    monitor = trainer.checkpoint_callback.monitor if trainer.checkpoint_callback else "val/elbo"
    ckpt_path = cfg.get("ckpt_path") or resume_checkpoint(cfg.get("resume", "never"), run_dir)
    if ckpt_path is not None:
        check_checkpoint(ckpt_path, model, cfg, steps_per_call=k)

    # fit
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except Diverged as err:
        _record_divergence(err, trainer, model, settings, run_dir, time.perf_counter() - start)
        raise
    stop.raise_if_stopped()  # a signal ended the fit: last.ckpt is written, skip testing
    fit_seconds = time.perf_counter() - start
    samples_seen = int(model.samples_seen)  # before testing a checkpoint reloads the buffer

    # record: test the best checkpoint (and the final weights when they differ)
    ckpt = _checkpoint_callback(trainer)
    best_path = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    if best_path is not None and ckpt.best_model_score is None:  # resumed in a moved run dir:
        best_path = None  # Lightning kept the path but not its score; test the final weights
    final_val = trainer.callback_metrics.get(monitor)
    if final_val is None and isinstance(ckpt, checkpoints.RunCheckpoint):
        final_val = ckpt.last_score  # resumed with nothing left to fit: nothing was validated
    final_is_best = (
        best_path is None
        or final_val is None
        or math.isclose(float(ckpt.best_model_score), float(final_val), rel_tol=0, abs_tol=1e-6)
    )
    metrics: dict[str, Any] = {"status": "completed"}
    if not final_is_best:  # test the final weights too, under their own prefix
        with model.testing_as("test_final"):
            metrics.update(_as_floats(trainer.test(model, datamodule=datamodule, verbose=False)))
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
            **(
                {"compile": {"mode": compile_mode, "backend": compile_backend}}
                if compile_mode
                else {}
            ),
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


def max_steps(
    cfg: DictConfig, settings: Settings, datamodule: ImageDataModule, trainer_kwargs: dict
) -> int | None:
    """`Trainer(max_steps=...)` for `budget_samples` (training samples evaluated over all ranks,
    the paper's x-axis; an epoch of N images ends with a partial step), or None without a
    budget. MCEM takes `model.mcem.updates` optimiser steps (Lightning's global steps) per
    minibatch."""
    if cfg.get("budget_samples") is None:
        return None
    steps = budget_steps(
        cfg.budget_samples,
        settings.data.batch_size,
        datamodule.train_size(),
        planned_world_size(trainer_kwargs),
    )
    if settings.model.algorithm == "mcem":
        steps *= settings.model.mcem_config().updates
    return steps


def planned_world_size(trainer_kwargs: dict[str, Any]) -> int:
    """The processes (nodes x devices) a Trainer built from `trainer_kwargs` runs, resolved
    with Lightning's Accelerator API as the Trainer resolves `accelerator` and `devices`."""
    name = trainer_kwargs.get("accelerator", "auto")
    if name in ("auto", "gpu"):  # Lightning's order: MPS, CUDA, then (auto) the CPU
        gpus = {"mps": MPSAccelerator, "cuda": CUDAAccelerator}
        name = next((n for n, gpu in gpus.items() if gpu.is_available()), "cpu")
    kind = type(AcceleratorRegistry.get(name))
    devices = trainer_kwargs.get("devices", "auto")
    if devices == "auto":
        devices = kind.auto_device_count()
    return int(trainer_kwargs.get("num_nodes", 1)) * len(
        kind.get_parallel_devices(kind.parse_devices(devices))
    )


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


def check_checkpoint(
    path: str, model: L.LightningModule, cfg: DictConfig | None = None, steps_per_call: int = 1
) -> None:
    """Refuse a missing, unreadable, unsafe or foreign `ckpt_path` in one line, before any
    training: loaded without running code, of this config's data/model/objective/optimizer,
    written with the same `steps_per_call` (the loops count steps differently)."""
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
    written_with = (ckpt.get(checkpoints.IDENTITY_KEY) or {}).get(CHECKPOINT_KEY, 1)
    if written_with != steps_per_call:
        raise ConfigError(
            "steps_per_call",
            f"{written_with}, the value {path} was written with (resume with it)",
            steps_per_call,
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


def record_interrupted(err: Interrupted, run_dir: Path) -> None:
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


def validation_due(trainer: L.Trainer) -> bool:
    """Whether an uninterrupted fit validates after the current training batch (Lightning's
    own decision, asked with `should_stop` unset: once a stop is requested, Lightning validates
    after whatever batch it stops at, a point the uninterrupted run never validates at)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    decide = getattr(epoch_loop, "_should_check_val_fx", None)  # private: Lightning 2.1-2.6
    if decide is None:  # another Lightning: validation follows an epoch's last batch
        return bool(trainer.enable_validation and epoch_loop.batch_progress.is_last_batch)
    stop, trainer.should_stop = trainer.should_stop, False
    try:
        return bool(decide(trainer.fit_loop._data_fetcher))
    finally:
        trainer.should_stop = stop


class StopOnSignal(L.Callback):
    """First SIGINT/SIGTERM during training: finish the batch, stop; second: `Interrupted`.

    Installed at train start, after Lightning's own SIGTERM handler (which would end the fit
    with a SystemExit of status 0); Lightning restores the previous handlers at teardown.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None or self._trainer is None:
            raise Interrupted(signum)
        self.signum = signum
        signals.set_stopping(signum)
        self._trainer.should_stop = True
        name = signal.Signals(signum).name
        print(
            f"aevb-train: {name} received: stopping after this batch and writing "
            "checkpoints/last.ckpt (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def raise_if_stopped(self) -> None:
        """Raise `Interrupted` if a signal stopped the fit (call after `trainer.fit`)."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        signals.set_stopping(None)
        self._previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, self._handle)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.signum is not None:  # a signal during validation: stop before the next batch
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """After a signal, write last.ckpt here, at the batch end: written later (at the end of
        the epoch the stop cuts short), it would mark that epoch done and a resume would skip
        the rest of it. Where an uninterrupted run validates after this batch (an epoch's last
        batch), that validation's own checkpoint writes still follow: best.ckpt and the
        best-score record then match the uninterrupted run's."""
        if self.signum is not None:
            then_validated = validation_due(trainer)
            for callback in trainer.checkpoint_callbacks:
                if hasattr(callback, "save_last_now"):
                    callback.save_last_now(trainer, then_validated=then_validated)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = None
        for s, handler in self._previous.items():
            signal.signal(s, handler)
