"""Fault injection and probes for the reliability tests, plugged in as extra callbacks from the
command line: `+callbacks.fault._target_=tests.faults.PoisonWeights +callbacks.fault.at_step=12`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig


class PoisonWeights(L.Callback):
    """At training step `at_step`, set the decoder's weights to +inf (a diverging update)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                for p in pl_module.decoder.parameters():
                    p.fill_(float("inf"))


class KillAt(L.Callback):
    """SIGKILL this process at training step `at_step` (a crash no handler can catch)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)


class RequireFlushedSubnormals(L.Callback):
    """Fail the run unless subnormal results are flushed to zero on every intra-op thread."""

    def on_train_start(self, trainer, pl_module) -> None:
        # 1e-40 is subnormal in float32; 2^20 elements (32 grains of torch's 32768) are split
        # over every intra-op worker thread, so each thread's mode is exercised
        tiny = torch.full((1 << 20,), 1e-30) * 1e-10
        if bool((tiny != 0).any()):
            raise RuntimeError("subnormal floats are not flushed to zero")


class NoImprovement(L.Callback):
    """From epoch 1 on, make the best score unbeatable: best.ckpt is never rewritten again."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        ckpt = trainer.checkpoint_callback
        if trainer.current_epoch >= 1:
            ckpt.best_k_models = {path: torch.tensor(float("inf")) for path in ckpt.best_k_models}
            ckpt.best_model_score = ckpt.kth_value = torch.tensor(float("inf"))


class SignalAt(L.Callback):
    """Send this process `signum` at training step `at_step` (as `kill` from outside would).
    `launcher_from_job=N`: instead, sweep job N alone sends it to the process that launched it
    (a joblib sweep's launcher, as one `kill <pid>` would), once `wait_for_jobs` jobs (itself
    included) have reached `at_step` (each leaves a `reached.<job>` file in the sweep dir)."""

    def __init__(
        self,
        at_step: int,
        signum: int = signal.SIGTERM,
        launcher_from_job: int | None = None,
        wait_for_jobs: int = 1,
    ) -> None:
        self.at_step, self.signum, self.from_job = at_step, signum, launcher_from_job
        self.wait_for_jobs = wait_for_jobs

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step != self.at_step:
            return
        if self.from_job is None:
            os.kill(os.getpid(), self.signum)
            return
        hydra = HydraConfig.get()
        sweep = Path(hydra.sweep.dir)
        (sweep / f"reached.{hydra.job.num}").touch()
        if hydra.job.num != self.from_job:
            return
        deadline = time.monotonic() + 300
        while len(list(sweep.glob("reached.*"))) < self.wait_for_jobs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {self.wait_for_jobs} jobs reached {self.at_step}")
            time.sleep(0.05)
        os.kill(os.getppid(), self.signum)
