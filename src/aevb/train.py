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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from aevb.atomic import write_json_atomic
from aevb.callbacks import log_hparams
from aevb.config import ConfigError, Settings, budget_steps
from aevb.data import DataError, ImageDataModule
from aevb.divergence import Diverged
from aevb.hparams import override_values
from aevb.preflight import check_command_line
from aevb.vae import VAE
from aevb.wake_sleep import WakeSleep

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
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    torch.set_float32_matmul_precision("high")
    # Adam's second moments of weights that see only zero pixels decay into subnormal floats;
    # x86 CPUs compute those ~100x slower (the optimizer step took 2x as long by epoch 4).
    # Flushing them to zero changes nothing above 1e-38; it must precede the first parallel op,
    # since the intra-op worker threads inherit the mode when they start.
    torch.set_flush_denormal(True)
    # epoch metrics are summed over ranks with strategy.reduce before logging (VAE._log_epoch):
    # Lightning's advice to add sync_dist=True does not apply
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*distributed setting.*")
    L.seed_everything(cfg.seed, workers=False, verbose=False)

    datamodule = ImageDataModule(**settings.datamodule_kwargs())
    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    trainer_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer).items() if v is not None}
    if cfg.get("budget_samples") is not None:  # the paper's x-axis: training samples evaluated
        steps = budget_steps(cfg.budget_samples, settings.data.batch_size)
        trainer_kwargs.update(max_steps=steps, max_epochs=-1)
    trainer = L.Trainer(
        **trainer_kwargs,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )
    check_ddp_launch(trainer)
    datamodule.trainer = trainer
    if trainer.is_global_zero:
        datamodule.prepare_data()
    datamodule.setup("fit")
    if cfg.get("budget_samples") is not None:  # now exact: N is known (partial last batches)
        n_train = len(datamodule.train_images)
        steps = budget_steps(cfg.budget_samples, settings.data.batch_size, n_train)
        trainer.fit_loop.epoch_loop.max_steps = steps  # what Trainer(max_steps=...) sets
    model_cls = WakeSleep if settings.model.algorithm == "wake_sleep" else VAE
    model = model_cls(**settings.model_kwargs(datamodule.data_shape, len(datamodule.train_images)))
    model.evaluation = settings.eval.test_evaluation()  # test/nll, test/iwae_k*, active units

    ckpt_path = cfg.get("ckpt_path") or resume_checkpoint(cfg.get("resume", "never"), run_dir)
    if ckpt_path is not None:
        check_checkpoint(ckpt_path, model)
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except Diverged as err:
        _record_divergence(err, trainer, model, settings, run_dir, time.perf_counter() - start)
        raise
    fit_seconds = time.perf_counter() - start
    samples_seen = int(model.samples_seen)  # before testing a checkpoint reloads the buffer

    ckpt = _checkpoint_callback(trainer)
    best_path = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    final_val = trainer.callback_metrics.get("val/elbo")
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
            "best_checkpoint": str(Path(best_path).relative_to(run_dir)) if best_path else None,
            "best_val/elbo": float(ckpt.best_model_score) if best_path else None,
            "final_is_best": final_is_best,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "samples_seen": samples_seen,
            "wall_time_s": round(time.perf_counter() - start, 3),
            "fit_time_s": round(fit_seconds, 3),
            "hparams": settings.hparams(),
        }
    )
    final = {
        k: v
        for k, v in metrics.items()
        if (k.startswith("test") or k == "best_val/elbo") and isinstance(v, float)
    }
    hydra_cfg = HydraConfig.get()  # HParams tab: the run's own overrides are columns too
    params = {**settings.hparams(), **override_values(hydra_cfg.overrides.task)}
    multirun = hydra_cfg.mode == RunMode.MULTIRUN  # the sweep declares the columns (SweepHParams)
    log_hparams(loggers, params, final, step=trainer.global_step, declare=not multirun)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / "metrics.json", metrics)
        print(_summary(metrics, run_dir))
    return metrics


#: `resume` values: when to continue from <run dir>/checkpoints/last.ckpt if ckpt_path is null
RESUME = ("requeue", "auto", "never")


def resume_checkpoint(
    resume: str, run_dir: Path, env: Mapping[str, str] | None = None
) -> str | None:
    """The run dir's last.ckpt to resume from, or None (see `resume` in conf/train.yaml).

    `requeue`: only when SLURM restarted this job (SLURM_RESTART_COUNT > 0: preempted or
    timed out and requeued by submitit / `scontrol requeue`, same job dir); `auto`: whenever
    the file exists; `never`: start from scratch.
    """
    if resume not in RESUME:
        raise ConfigError("resume", f"one of {list(RESUME)}", resume)
    # read at call time: submitit pickles `python -m aevb.train`'s functions by value, and a
    # default of os.environ would be the submitting process's copy, without SLURM's variables
    env = os.environ if env is None else env
    last = run_dir / "checkpoints" / "last.ckpt"
    requeued = int(env.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    if last.is_file() and (resume == "auto" or (resume == "requeue" and requeued)):
        log.info("resuming from %s (resume=%s)", last, resume)
        return str(last)
    return None


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


def check_checkpoint(path: str, model: L.LightningModule) -> None:
    """Refuse a missing, unreadable or foreign `ckpt_path` in one line, before any training."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            "ckpt_path", "an existing checkpoint file (e.g. <run>/checkpoints/last.ckpt)", path
        )
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 -- any unpickling failure means a corrupt file
        reason = " ".join(str(err).split())[:160]
        raise ConfigError("ckpt_path", f"a readable Lightning checkpoint ({reason})", path) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
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
    ckpts = run_dir / "checkpoints"
    write_json_atomic(
        run_dir / "metrics.json",
        {
            "status": "diverged",
            "error": str(err),
            "diverged_step": err.step,
            "diverged_epoch": err.epoch,
            "diverged_term": err.term,
            "last_checkpoint": "checkpoints/last.ckpt" if (ckpts / "last.ckpt").is_file() else None,
            "samples_seen": int(model.samples_seen),
            "wall_time_s": round(seconds, 3),
            "hparams": settings.hparams(),
        },
    )


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
    try:
        metrics = train(cfg)
    except (ConfigError, DataError, ValueError, Diverged) as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN or _full_error():
            raise  # multirun: Hydra records the failed job and the sweep goes on
        print(f"aevb-train: error: {err}", file=sys.stderr)
        sys.exit(3 if isinstance(err, Diverged) else 2)
    return metrics.get("best_val/elbo")


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _validate(cfg: DictConfig) -> None:
    """Every check that needs no data or model: values (Settings) and that ckpt_path exists."""
    Settings.from_cfg(cfg)
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
    _app()


if __name__ == "__main__":
    main()
