"""A run owns its directory: its layout (`RunDir`), unique names, an exclusive lock, and
refusals before Hydra writes.

- `RunDir` is the one place that names the files inside a run directory; aevb-train, aevb-eval,
  aevb-figures, aevb-summarize, `load_run` and the callbacks ask it for paths.

- Run and sweep dirs are named to the microsecond (conf/train.yaml), so two launches in the
  same second get two directories.
- `RunDirGuard` (a Hydra callback, conf/train.yaml: hydra.callbacks.rundir) runs before Hydra
  creates or writes anything (.hydra/, the log file). It takes an exclusive lock on the run
  (or sweep) dir, held until the process ends (flock: released by the kernel even on SIGKILL),
  and refuses in one line, leaving every file as it was:
  - a dir another aevb-train or sweep holds;
  - a dir that is not writable;
  - a run dir that already holds a run, unless this launch resumes it (`resume=auto`, a SLURM
    requeue with `resume=requeue`, or `ckpt_path` inside it) with the same data, model,
    objective and optimizer (`checkpoints.identity`); `resume=auto` restarts a run that never
    wrote checkpoints/last.ckpt;
  - a `ckpt_path` that cannot be loaded safely or belongs to another config;
  - a sweep dir that already holds jobs, unless `resume=auto`.
- Sweep jobs are named by the `aevb.job_dir` resolver (hydra.sweep.subdir): a job whose
  overrides match an existing job dir of the sweep gets that dir, so re-running a sweep with
  reordered values resumes each job with its own hyper-parameters; a new job gets its number,
  or `<number>-<hash of its overrides>` when that name is taken. In a multi-task SLURM job
  (DDP), rank 0 names the dir and the other ranks wait for it: each resolving on its own, a rank
  that came second found the dir a sibling had just made and took `<number>-<hash>`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, overload

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aevb.errors import CheckpointError, ConfigError, RunDirError, one_line

log = logging.getLogger("aevb.rundir")

#: `resume` values: when to continue from <run dir>/checkpoints/last.ckpt if ckpt_path is null
RESUME = ("requeue", "auto", "never")
#: overrides that do not change which job a sweep point is
_NOT_IDENTITY = ("resume", "ckpt_path")
#: open directory descriptors whose flock this process holds (released at exit)
_HELD: dict[Path, int] = {}


class _Entry:
    """A file or folder of a run directory: on a `RunDir`, its path (`RunDir(p).metrics` is
    p / "metrics.json"); on the class, the name relative to the run directory."""

    def __init__(self, relative: str) -> None:
        self.relative = relative

    @overload
    def __get__(self, run: None, owner: type) -> str: ...
    @overload
    def __get__(self, run: RunDir, owner: type) -> Path: ...
    def __get__(self, run: RunDir | None, owner: type) -> Path | str:
        return self.relative if run is None else run.path / self.relative


@dataclass(frozen=True)
class RunDir:
    """The files of one aevb-train run directory (Hydra's output dir)::

    .hydra/{config,hydra,overrides}.yaml   the resolved config, Hydra's own, the overrides
    checkpoints/{best,last}.ckpt            best by the monitored metric; every epoch's end
    metrics.json                            aevb-train's record (test metrics, status)
    eval.json                               aevb-eval's record
    learning_curve.json, marginal_curve.json  Fig. 2 / Fig. 3 curves (the callbacks)
    figures/                                aevb-figures' default output for this dir
    """

    CONFIG: ClassVar[str] = ".hydra/config.yaml"
    OVERRIDES: ClassVar[str] = ".hydra/overrides.yaml"  #: a sweep's job dirs all hold one
    LEARNING_CURVE: ClassVar[str] = "learning_curve.json"
    MARGINAL_CURVE: ClassVar[str] = "marginal_curve.json"

    path: Path

    config = _Entry(CONFIG)
    hydra_config = _Entry(".hydra/hydra.yaml")
    overrides = _Entry(OVERRIDES)
    checkpoints = _Entry("checkpoints")
    best_checkpoint = _Entry("checkpoints/best.ckpt")
    last_checkpoint = _Entry("checkpoints/last.ckpt")
    metrics = _Entry("metrics.json")
    eval = _Entry("eval.json")
    learning_curve = _Entry(LEARNING_CURVE)
    marginal_curve = _Entry(MARGINAL_CURVE)
    figures = _Entry("figures")

    def is_run(self) -> bool:
        """Whether aevb-train (Hydra) wrote this directory: it holds the resolved config."""
        return self.config.is_file()

    def has_checkpoint(self) -> bool:
        return self.best_checkpoint.is_file() or self.last_checkpoint.is_file()

    def checkpoint(self) -> Path:
        """The best checkpoint of the run (falls back to last.ckpt), or FileNotFoundError."""
        for path in (self.best_checkpoint, self.last_checkpoint):
            if path.is_file():
                return path
        raise FileNotFoundError(f"no checkpoints/best.ckpt or checkpoints/last.ckpt in {self.path}")

    def relative(self, path: str | Path) -> str:
        """`path` relative to the run dir; absolute if it lies elsewhere (a copied run dir)."""
        path = Path(path)
        return str(path.relative_to(self.path)) if path.is_relative_to(self.path) else str(path)

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunDir | None:
        """The run dir a checkpoint file sits in (in checkpoints/, or at its top), or None."""
        ckpt = Path(ckpt).resolve()
        for run in (cls(ckpt.parent.parent), cls(ckpt.parent)):
            if run.is_run():
                return run
        return None

    @classmethod
    def below(cls, root: Path) -> list[RunDir]:
        """Every run dir at or below `root`, sorted by path."""
        return [cls(cfg.parent.parent) for cfg in sorted(root.glob(f"**/{cls.CONFIG}"))]


def last_checkpoint(run_dir: Path) -> Path:
    return RunDir(run_dir).last_checkpoint


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
    last = last_checkpoint(run_dir)
    requeued = int(env.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    if last.is_file() and (resume == "auto" or (resume == "requeue" and requeued)):
        log.info("resuming from %s (resume=%s)", last, resume)
        return str(last)
    return None


def lock(directory: Path, what: str) -> None:
    """Create `directory` if needed and hold an exclusive flock on it, or raise RunDirError."""
    directory = directory.resolve()
    if directory in _HELD:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise RunDirError(
            f"{what} {directory} cannot be created ({err.strerror}); "
            f"choose a writable {what} (e.g. {what}=/scratch/$USER/run)"
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise RunDirError(
                f"{what} {directory} is in use by another aevb-train; wait for it to finish, "
                f"or choose another {what}"
            ) from err
        raise
    if not os.access(directory, os.W_OK):
        os.close(fd)
        raise RunDirError(
            f"{what} {directory} is not writable (read-only filesystem or no permission); "
            f"choose a writable {what}"
        )
    _HELD[directory] = fd


def run_config_of(ckpt: str | Path) -> Path | None:
    """The `.hydra/config.yaml` of the run a checkpoint sits in (`checkpoints.check_identity`
    compares with it when the checkpoint stores no identity), or None."""
    run = RunDir.of_checkpoint(ckpt)
    return run.config if run is not None else None


def is_secondary_rank(env: Mapping[str, str] = os.environ) -> bool:
    """A DDP rank > 0, started by Lightning or SLURM into rank 0's run dir."""
    keys = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")
    return any(int(env.get(k, "0") or 0) > 0 for k in keys)


def check_ckpt_path(cfg: DictConfig) -> None:
    """Refuse a `ckpt_path` that cannot be loaded safely or belongs to another config."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None:
        try:
            from aevb import checkpoints  # torch and Lightning: only when resuming

            ckpt = checkpoints.load(ckpt_path)
            checkpoints.check_identity(cfg, ckpt, ckpt_path, run_config_of(ckpt_path))
        except CheckpointError as err:
            raise CheckpointError(f"ckpt_path: {err}") from err


def check_run_dir(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to start in `run_dir` unless it is new or this launch resumes its run."""
    ckpt_path = cfg.get("ckpt_path")
    old_config = RunDir(run_dir).config
    if not old_config.is_file():
        return
    resume = cfg.get("resume", "never")
    resumed = resume_checkpoint(resume, run_dir)
    inside = ckpt_path is not None and Path(ckpt_path).resolve().is_relative_to(run_dir)
    restart = resume == "auto" and not last_checkpoint(run_dir).exists()  # nothing to lose
    if resumed is None and not inside and not restart:
        raise RunDirError(
            f"hydra.run.dir {run_dir} already holds a run; resume it with resume=auto "
            f"(it needs {last_checkpoint(run_dir).relative_to(run_dir)}), or choose a new "
            "hydra.run.dir (the default outputs/<date>/<time> is new for every launch)"
        )
    from aevb import checkpoints  # torch and Lightning: only for a run dir in use

    diff = checkpoints.difference(
        checkpoints.identity(OmegaConf.load(old_config)), checkpoints.identity(cfg)
    )
    if diff:
        raise RunDirError(
            f"hydra.run.dir {run_dir} holds a run of another config "
            f"({diff.replace('in the checkpoint', 'in that run')}); "
            "resume it with its own values, or choose a new hydra.run.dir"
        )


def _job_key(overrides: Any) -> list[str]:
    items = [str(o) for o in overrides]
    return sorted(o for o in items if o.partition("=")[0].lstrip("+~") not in _NOT_IDENTITY)


def existing_jobs(sweep_dir: Path) -> dict[str, tuple[str, ...]]:
    """{job subdir name: its sorted identifying overrides} of the jobs already in a sweep dir."""
    jobs = {}
    for marker in sorted(sweep_dir.glob(f"*/{RunDir.OVERRIDES}")):
        try:
            jobs[marker.parent.parent.name] = tuple(_job_key(OmegaConf.load(marker)))
        except Exception:  # noqa: BLE001 -- an unreadable job is not a match
            continue
    return jobs


#: how long a DDP rank > 0 of a sweep job waits for rank 0 to create the job's dir
RANK_ZERO_DIR_TIMEOUT_S = 300.0


def _rank_zero_job_dir(sweep_dir: Path, mine: tuple[str, ...], timeout: float) -> str:
    """The job dir rank 0 of this job created (it holds this job's overrides), once it exists."""
    deadline = time.monotonic() + timeout
    while True:
        for name, theirs in existing_jobs(sweep_dir).items():
            if theirs == mine:
                return name
        if time.monotonic() > deadline:
            raise RunDirError(
                f"hydra.sweep.dir {sweep_dir}: rank 0 of this job wrote no job dir with its "
                f"overrides within {timeout:.0f} s (a rank > 0 joins the dir rank 0 names)"
            )
        time.sleep(0.2)


def job_dir(num: Any, *, _root_: DictConfig) -> str:
    """hydra.sweep.subdir of a sweep job: the existing dir with its overrides, else new (a DDP
    rank > 0: the dir its rank 0 makes)."""
    sweep_dir = Path(str(_root_.hydra.sweep.dir))
    mine = tuple(_job_key(_root_.hydra.overrides.task))
    if is_secondary_rank():
        return _rank_zero_job_dir(sweep_dir, mine, RANK_ZERO_DIR_TIMEOUT_S)
    for name, theirs in existing_jobs(sweep_dir).items():
        if theirs == mine:
            return name
    name = str(num)
    if (sweep_dir / name).exists():
        name += "-" + hashlib.sha1("\n".join(mine).encode()).hexdigest()[:8]
    return name


OmegaConf.register_new_resolver("aevb.job_dir", job_dir, replace=True)


def _refuse(err: Exception) -> None:
    print(f"aevb-train: error: {one_line(err, limit=None)}", file=sys.stderr)
    sys.exit(2)


class RunDirGuard(Callback):
    """Hydra callback: lock and check the run / sweep dir before Hydra writes into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if is_secondary_rank():
            return
        # resolving here fixes ${now:...} for the run: Hydra caches it on this config object
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir"))).absolute()
        try:
            check_ckpt_path(config)  # before the lock creates the run dir
            lock(run_dir, "hydra.run.dir")
            check_run_dir(config, run_dir)
        except (RunDirError, CheckpointError, ValueError) as err:
            _refuse(err)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()
        try:
            lock(sweep_dir, "hydra.sweep.dir")
            jobs = existing_jobs(sweep_dir)
            if jobs and config.get("resume") != "auto":
                raise RunDirError(
                    f"hydra.sweep.dir {sweep_dir} already holds a sweep ({len(jobs)} jobs); "
                    "re-run it with resume=auto to resume its jobs (matched by their "
                    "overrides), or choose a new hydra.sweep.dir"
                )
        except RunDirError as err:
            _refuse(err)
