"""Progress of a long evaluation on stderr: one line per batch, at most one every `every_s`.

`aevb-eval: test batch 12/100 (12%), 35 s elapsed, ~4.3 min left` -- what a log file on a
cluster shows, where a progress bar would be a wall of carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L


class EvalProgress(L.Callback):
    """Prints test progress to `stream` after a batch, at most once every `every_s` seconds."""

    def __init__(
        self, prog: str = "aevb-eval", every_s: float = 10.0, stream: TextIO | None = None
    ):
        self.prog, self.every_s, self.stream = prog, every_s, stream
        self.done = 0
        self._start = self._last = 0.0

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self.done = 0

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        total = sum(trainer.num_test_batches) if trainer.num_test_batches else 0
        elapsed = now - self._start
        line = f"{self.prog}: test batch {self.done}/{total}"
        if total:
            left = elapsed / self.done * (total - self.done)
            line += f" ({100 * self.done / total:.0f}%), {elapsed:.0f} s elapsed, "
            line += f"~{left / 60:.1f} min left"
        print(line, file=self.stream or sys.stderr, flush=True)
