"""SIGINT/SIGTERM: stop within seconds, keep what is resumable, exit 128 + signal number.

- `raising()`: while it is active, SIGINT or SIGTERM raise `Interrupted` at once (between two
  Python bytecodes, so between two torch ops): for work with nothing to save mid-way (data
  setup, testing, aevb-eval).
- `aevb.training.StopOnSignal` (a Lightning callback, kept there so that this module loads
  without Lightning): during training, the first SIGINT/SIGTERM finishes the current batch and
  stops the fit (`trainer.should_stop`), so the optimizer step is never cut in half and
  last.ckpt is written at that batch end; a second signal raises `Interrupted` at once.
- `stopping_sweep()`: in the process that launches a sweep, a first SIGINT/SIGTERM that arrives
  while process-pool workers (hydra/launcher=joblib) run its jobs is forwarded to them, so each
  running job stops as above and is recorded `interrupted`; jobs not yet started are recorded
  `interrupted` without training (`worker_stopped`), the summary is written and the launcher
  exits 130/143. Without workers (or on a second signal) it raises `Interrupted` at once.
  A worker still starting up has the default action (it would die, and the pool would abort
  every job), so the launcher signals only workers that said they handle signals (a `ready.PID`
  file in a private directory named by `$AEVB_SWEEP_STOP_DIR`); it first writes `stop.SIGNUM`
  there, which a worker reads before each job, so none is missed.

Exit status 130 (SIGINT) / 143 (SIGTERM), as a shell reports a process killed by that signal.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: environment variable naming the launcher's stop directory (workers inherit it)
STOP_DIR_ENV = "AEVB_SWEEP_STOP_DIR"


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


#: the signal that is stopping this process's training (`training.StopOnSignal`), or None
_stopping: int | None = None


def stopping() -> int | None:
    """The signal a fit is stopping for, or None: end-of-training work that is not needed to
    resume (a curve's off-grid last point) is skipped, so the stop takes seconds."""
    return _stopping


def set_stopping(signum: int | None) -> None:
    """Record (or clear, with None) the signal the current fit stops for."""
    global _stopping
    _stopping = signum


#: the signal this worker process received (`in_worker`): it then starts no further job
_worker_signal: int | None = None


def in_worker() -> bool:
    """True in a process-pool launcher's worker (joblib/loky), whose job results go back to
    the launching process instead of ending it."""
    return multiprocessing.parent_process() is not None


def _remember(signum: int, frame: FrameType | None) -> None:
    global _worker_signal
    _worker_signal = signum


def worker_stopped(signum: int | None = None) -> int | None:
    """In a worker: remember `signum` (a job it ran was interrupted), keep remembering signals
    that arrive between jobs (the default action would kill the worker, and the launcher would
    then abort every other job), tell the launcher this worker now handles signals, and return
    the signal received so far, or the one the sweep was stopped by, or None."""
    global _worker_signal
    if signum is not None:
        _worker_signal = signum
    for s in SIGNALS:
        signal.signal(s, _remember)
    stop_dir = os.environ.get(STOP_DIR_ENV)
    if stop_dir:  # ready first, then look for a stop: the launcher writes in the other order
        with contextlib.suppress(OSError):
            (Path(stop_dir) / f"ready.{os.getpid()}").touch()
        stops = sorted(Path(stop_dir).glob("stop.*"))
        if _worker_signal is None and stops:
            _worker_signal = int(stops[0].suffix[1:])
    return _worker_signal


class SweepStop:
    """The signal `stopping_sweep` forwarded to the workers (None: none); `exit_code` 128 + it."""

    def __init__(self, stop_dir: Path) -> None:
        self.signum: int | None = None
        self.stop_dir = stop_dir

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        workers = multiprocessing.active_children()
        if self.signum is not None or not workers:
            raise Interrupted(signum)
        self.signum = signum
        (self.stop_dir / f"stop.{signum}").touch()  # before listing the ready workers
        ready = [w for w in workers if (self.stop_dir / f"ready.{w.pid}").exists()]
        for worker in ready:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)
        print(
            f"aevb-train: {signal.Signals(signum).name} received: stopping the sweep's "
            f"{len(ready)} running jobs after their batch (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum

    def __str__(self) -> str:
        return "not stopped" if self.signum is None else str(Interrupted(self.signum))


@contextlib.contextmanager
def stopping_sweep() -> Iterator[SweepStop]:
    """`raising()`, except that a first signal while process-pool workers run the sweep's jobs
    is forwarded to them (see the module docstring); check `.signum` after the block."""
    stop = SweepStop(Path(tempfile.mkdtemp(prefix="aevb-sweep-")))
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    previous_dir = os.environ.get(STOP_DIR_ENV)
    os.environ[STOP_DIR_ENV] = str(stop.stop_dir)  # before any worker starts: they inherit it
    for s in SIGNALS:
        signal.signal(s, stop._handle)
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if previous_dir is None:
            os.environ.pop(STOP_DIR_ENV, None)
        else:
            os.environ[STOP_DIR_ENV] = previous_dir
        shutil.rmtree(stop.stop_dir, ignore_errors=True)
