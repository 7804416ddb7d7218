"""Checkpoints of a run: written atomically, loaded without running code, checked against config.

- `AtomicCheckpointIO` (a Lightning CheckpointIO plugin): every checkpoint is serialized in
  memory, then written to a temp file beside its target, fsynced and renamed over it
  (`atomic.write_bytes_atomic`), so a kill or a full disk leaves the
  previous file, never a truncated one, whatever filesystems the run dir and $TMPDIR are on.
  It also stores the config that identifies the run (`identity`) under `IDENTITY_KEY`.
- `RunCheckpoint` (a ModelCheckpoint): best.ckpt by the monitored metric as usual, and last.ckpt
  at the end of every epoch and at the end of training (Lightning rewrites last.ckpt only when
  a best checkpoint was written at the same step).
- `load`: `torch.load(weights_only=True)`: tensors, containers and primitives only; a file
  that would need anything else is refused with a one-line `CheckpointError`.
- `identity` / `difference`: the config keys a checkpoint's weights depend on, and the first
  key where a config and a checkpoint disagree.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig, ListConfig, OmegaConf

from aevb.atomic import write_bytes_atomic
from aevb.errors import CheckpointError, one_line

#: checkpoint key holding `identity(cfg)` of the run that wrote it
IDENTITY_KEY = "aevb_identity"
#: config sections a checkpoint's weights and optimizer state depend on; a resume must match
IDENTITY_SECTIONS = ("data", "model", "likelihood", "optim", "lr_schedule", "seed")
#: keys inside those sections that may change between runs of the same data (where it lives,
#: how fast it is read)
PORTABLE_KEYS = frozenset(
    {"data.root", "data.download", "data.eval_batch_size", "data.num_workers", "optim.fused"}
)
#: classes aevb's own checkpoints hold beyond tensors, containers and primitives (none today:
#: hyper-parameters are plain dicts, RNG states are tensors and numpy arrays, which
#: `weights_only` loading already allows). Add a class here only with a test that writes it.
SAFE_GLOBALS: tuple[Any, ...] = ()


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def identity(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The flat `section.key -> value` entries of `cfg` that a checkpoint depends on."""
    plain = {}
    for section in IDENTITY_SECTIONS:
        if section in cfg:
            value = cfg[section]
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            plain[section] = value
    flat = _flatten(plain)
    return {k: v for k, v in flat.items() if k not in PORTABLE_KEYS}


def difference(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str | None:
    """The first key where two `identity` records differ, as `key=<given> (checkpoint: <x>)`.

    A key only one side has (a config key added, or removed, since the checkpoint was written)
    is not a difference: its default is taken to reproduce the old behaviour.
    """
    for key in sorted(set(expected) & set(given)):
        if key.split(".")[0] not in IDENTITY_SECTIONS or key in PORTABLE_KEYS:
            continue
        mine, theirs = given[key], expected[key]
        if mine != theirs:
            return f"{key}={mine} in the config, {key}={theirs} in the checkpoint"
    return None


def load(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint loaded without executing code (weights_only=True), or a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        what = " ".join(str(err).split("\n\n")[1:2] or [str(err)]).split(".")[0]
        raise CheckpointError(
            f"{path}: refused, it holds more than tensors and plain data ({what[:160]}); "
            "aevb loads checkpoints with torch.load(weights_only=True) and never runs their code"
        ) from err
    except Exception as err:  # noqa: BLE001 -- garbage makes the unpickler raise anything
        reason = one_line(err, 160)
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({reason}); it is truncated or corrupt, "
            "use another one (e.g. checkpoints/best.ckpt or an earlier copy)"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint written by aevb-train")
    return ckpt


def check_identity(
    cfg: DictConfig | Mapping[str, Any],
    ckpt: Mapping[str, Any],
    path: str | os.PathLike[str],
    run_config: Path | None = None,
) -> None:
    """Refuse a checkpoint whose data, model, objective or optimizer differ from `cfg`.

    The reference is the identity stored in the checkpoint, else `run_config`, the resolved
    config of the run dir the checkpoint sits in (`aevb.rundir.run_config_of`); a checkpoint
    with neither is only shape-checked.
    """
    stored = ckpt.get(IDENTITY_KEY)
    if stored is None:
        if run_config is None or not run_config.is_file():
            return
        stored = identity(OmegaConf.load(run_config))
    diff = difference(stored, identity(cfg))
    if diff:
        raise CheckpointError(
            f"{path} does not belong to this config: {diff}; resume with the checkpoint's "
            "value, or start a new run (ckpt_path=null, a new hydra.run.dir)"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save, then a same-directory temp file + fsync + rename; loads weights_only=True.

    `identity` (see `identity()`) is stored in every checkpoint under `IDENTITY_KEY`.
    """

    def __init__(self, run_identity: Mapping[str, Any] | None = None) -> None:
        self.run_identity = dict(run_identity or {})

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        if self.run_identity:
            checkpoint = {**checkpoint, IDENTITY_KEY: self.run_identity}
        buffer = io.BytesIO()  # torch's zip writer turns ENOSPC into an opaque RuntimeError
        torch.save(checkpoint, buffer)
        write_bytes_atomic(path, buffer.getvalue())

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load(path, map_location=map_location if map_location is not None else "cpu")


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt is rewritten at the end of every epoch and of training.

    Lightning 2.6 rewrites last.ckpt only at a step where a top-k checkpoint was also written,
    so the final weights of a run whose last epoch is not its best were never saved. Here,
    last.ckpt is written where Lightning writes it, then, if it is older than the current step,
    where Lightning saves checkpoints (train-epoch end, or validation end when validation runs
    several times an epoch), at every train-epoch end, and at the end of fit (e.g. max_steps
    reached mid-epoch, or a signal: `training.StopOnSignal`).

    `last_every_n_epochs` thins the epoch-end writes for runs of many tiny epochs (Frey Face:
    17 steps an epoch); the other writes stay.
    """

    _last_step_written: int | None = None
    #: the monitored value when last.ckpt was written (kept in it): a run resumed with nothing
    #: left to fit validates nothing, and compares this with the best score instead
    last_score: float | None = None

    def __init__(self, *args: Any, last_every_n_epochs: int = 1, **kwargs: Any) -> None:
        if not (isinstance(last_every_n_epochs, int) and last_every_n_epochs >= 1):
            raise ValueError(
                f"callbacks.checkpoint.last_every_n_epochs must be an integer >= 1, "
                f"got {last_every_n_epochs!r}"
            )
        super().__init__(*args, **kwargs)
        self.last_every_n_epochs = last_every_n_epochs

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key: the best-checkpoint record of runs written before this class
        (and of any plain ModelCheckpoint) is restored on resume."""
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_score": self.last_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.last_score = state_dict.get("last_score")  # absent from older checkpoints

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        if self.save_last and self.monitor is not None:
            value = monitor_candidates.get(self.monitor)
            self.last_score = None if value is None else float(value)
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_step_written = trainer.global_step

    def _save_last_if_stale(self, trainer: L.Trainer) -> None:
        if (
            self.save_last
            and not trainer.fast_dev_run
            and not trainer.sanity_checking
            and trainer.state.fn == TrainerFn.FITTING
            and self._last_step_written != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def save_last_now(self, trainer: L.Trainer, then_validated: bool = False) -> None:
        """Write last.ckpt at this point (a signal's stop at a batch end: the state Lightning
        resumes mid-epoch from; the epoch-end and train-end writes then see it is current).

        `then_validated`: the uninterrupted run validates right after this batch, so the writes
        that follow that validation (best.ckpt if it improved, last.ckpt past it) must still
        happen: Lightning skips every save at a step it has already saved at, and a resume
        from this pre-validation last.ckpt would never validate this epoch."""
        if not self.save_last or self._last_step_written == trainer.global_step:
            return
        saved_step, written_step = self._last_global_step_saved, self._last_step_written
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if then_validated:  # this write only guards against a second signal in validation
            self._last_global_step_saved, self._last_step_written = saved_step, written_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # else: saved at epoch end
            self._save_last_if_stale(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if (trainer.current_epoch + 1) % self.last_every_n_epochs == 0:
            self._save_last_if_stale(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_if_stale(trainer)
