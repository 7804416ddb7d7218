"""The evaluation job of `aevb-eval`: load a run, test it, return its eval.json record.

Imports torch and Lightning; `aevb.evaluate` (the command line: checks, eval.json) imports this
module only once the command line has been accepted, so `--help` and a refused argument answer
without loading them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from aevb.config import EvalConfig
from aevb.devices import runtime_record
from aevb.epoch_metrics import EvaluationSettings
from aevb.errors import ConfigError
from aevb.marginal_curve import marginal_log_likelihood
from aevb.numerics import configure_numerics
from aevb.progress import EvalProgress
from aevb.runs import checkpoint_of, load_run


def evaluate_run(
    run_dir: Path, ckpt: Path | None, settings: EvalConfig, accelerator: str
) -> dict[str, Any]:
    """The completed eval.json record of checkpoint `ckpt` (None: the best) of `run_dir`."""
    configure_numerics()  # as aevb-train; test_step itself runs in IEEE float32
    evaluation = EvaluationSettings(**settings.test_evaluation())
    run = load_run(run_dir, checkpoint=ckpt, evaluation=evaluation)
    model = run.model
    check_memory(settings, run.datamodule.eval_batch_size, accelerator)
    L.seed_everything(settings.seed, workers=False, verbose=False)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        callbacks=[EvalProgress()],
    )
    start = time.perf_counter()
    results = trainer.test(model, datamodule=run.datamodule, verbose=False)
    record: dict[str, Any] = {"status": "completed"}
    record.update({k: float(v) for r in results for k, v in r.items()})
    if settings.marginal == "hmc":  # the same estimate for every algorithm
        x = run.datamodule.test_images[: settings.hmc_points]
        log_px = marginal_log_likelihood(model, x, seed=settings.seed)
        record.update({"test/nll_hmc": float(-log_px.mean()), "hmc_points": len(x)})
    seconds = time.perf_counter() - start
    stats = getattr(model, "test_latent_stats", {})
    record.update(
        {
            "gap": -record["test/elbo"] - record["test/nll"] if "test/nll" in record else None,
            "test/kl_per_dim": stats.get("kl_per_dim"),
            "test/latent_activity": stats.get("activity"),
            "checkpoint": str((ckpt or checkpoint_of(run_dir)).relative_to(run_dir)),
            "eval": dataclasses.asdict(settings),
            "num_test": len(run.datamodule.test_images),
            **runtime_record(trainer),  # device, precision, world size, torch version
            "threads": torch.get_num_threads(),
            "seconds": round(seconds, 3),
        }
    )
    return record


def check_memory(settings: EvalConfig, batch: int, accelerator: str) -> None:
    """Refuse an eval.iw_samples whose [k, batch] log-weights would not fit in free CPU memory."""
    if settings.iw_samples == 0 or accelerator == "gpu" or torch.cuda.is_available():
        return
    need = settings.iw_samples * batch * 4 * 2  # float32 log-weights, plus a same-size temporary
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free:
        raise ConfigError(
            "eval.iw_samples",
            f"a k whose log-weights fit in memory ({need / 2**30:.1f} GiB for batches of {batch} "
            f"test images, {free / 2**30:.1f} GiB free; k <= {free // (batch * 8)})",
            settings.iw_samples,
        )
