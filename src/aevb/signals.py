"""SIGINT/SIGTERM: stop within seconds, keep what is resumable, exit 128 + signal number.

- `raising()`: while it is active, SIGINT or SIGTERM raise `Interrupted` at once (between two
  Python bytecodes, so between two torch ops): for work with nothing to save mid-way (data
  setup, testing, aevb-eval).
- `StopOnSignal` (a Lightning callback): during training, the first SIGINT/SIGTERM finishes the
  current batch and stops the fit (`trainer.should_stop`), so the optimizer step is never cut in
  half and last.ckpt is written (`checkpoints.RunCheckpoint` at the end of fit); a second
  signal raises `Interrupted` at once. `signum` says which signal stopped it.

Exit status 130 (SIGINT) / 143 (SIGTERM), as a shell reports a process killed by that signal.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import lightning as L

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):  # noqa: N818 -- a state, like KeyboardInterrupt
    """A run stopped by SIGINT/SIGTERM; `exit_code` = 128 + signal number.

    A BaseException, like KeyboardInterrupt, so that `except Exception` (Hydra's job runner,
    a sweep's failed-job handling) lets it through.
    """

    def __init__(self, signum: int, detail: str = "") -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}" + (f": {detail}" if detail else ""))


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """SIGINT/SIGTERM raise `Interrupted` inside the block; the previous handlers after it."""
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
        self._previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, self._handle)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.signum is not None:  # a signal during validation: stop before the next batch
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        """After a signal, write last.ckpt here, at the batch end: written later (at the end of
        the epoch the stop cuts short), it would mark that epoch done and a resume would skip
        the rest of it."""
        if self.signum is not None:
            for callback in trainer.checkpoint_callbacks:
                if hasattr(callback, "save_last_now"):
                    callback.save_last_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = None
        for s, handler in self._previous.items():
            signal.signal(s, handler)
