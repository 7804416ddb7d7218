"""Fault injection for the reliability tests, plugged in as extra callbacks from the command line:
`+callbacks.fault._target_=tests.faults.PoisonWeights +callbacks.fault.at_step=12`."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch


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
