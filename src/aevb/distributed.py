"""What every rank must agree on under DDP: training seeds, saved RNG states, stop decisions.

- `seed_rank_streams`: at the start of training, rank r > 0 re-seeds its training noise with
  `aevb.rng.rank_seed(seed, r)` (rank 0 keeps the run's seed), unless it resumes.
- `gather_rng_states` / `restore_rng_states`: every rank's RNG state goes into the checkpoint
  (rank 0 writes it) and each rank restores its own, so a resumed run continues bit-exactly.
- `RankStreams`: the LightningModule hooks that do the two above for a model's training noise.
- `any_rank`: one all-reduced flag tensor, so every rank takes the same decision (a rank that
  stopped alone would leave the others waiting in the next all-reduce until a timeout).

All functions are collective where the world size is > 1: call them on every rank.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from torch import Tensor

from aevb import rng


def run_seed() -> int:
    """The seed `lightning.seed_everything` set for this run (its PL_GLOBAL_SEED)."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else torch.initial_seed() & 0xFFFFFFFF


def _own_states(device: torch.device) -> dict[str, Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if device.type in ("cuda", "mps"):
        states[device.type] = rng.get_state(device)
    return states


def gather_rng_states(trainer: L.Trainer) -> dict[str, Any]:
    """{"ranks": [states of rank 0, 1, ...], **states of rank 0}: each rank's default CPU and
    accelerator RNG states ({"cpu": ByteTensor, "cuda"/"mps": ByteTensor}), all on the CPU.

    Rank 0's states also sit at the top level, where checkpoints before per-rank states kept them.
    """
    device = trainer.strategy.root_device
    own = _own_states(device)
    if trainer.world_size <= 1:
        return {**own, "ranks": [own]}
    sizes = {k: v.numel() for k, v in own.items()}
    flat = torch.cat([v.flatten() for v in own.values()]).to(device)
    every = trainer.strategy.all_gather(flat).cpu()  # [world_size, n]
    ranks = []
    for row in every:
        parts = torch.split(row, list(sizes.values()))
        ranks.append({k: p.clone() for k, p in zip(sizes, parts, strict=True)})
    return {**ranks[0], "ranks": ranks}


def restore_rng_states(states: dict[str, Any] | None, rank: int, device: torch.device) -> bool:
    """Restore rank `rank`'s states from `gather_rng_states`' record; False if it has none.

    A checkpoint without per-rank states (written before them) holds rank 0's only.
    """
    if not states:
        return False
    ranks = states.get("ranks")
    own = ranks[rank] if ranks is not None and rank < len(ranks) else None
    if own is None and ranks is None and rank == 0:
        own = states
    if own is None:
        return False
    torch.set_rng_state(own["cpu"])
    if device.type in own:
        rng.set_state(device, own[device.type])
    return True


def seed_rank_streams(trainer: L.Trainer, resume_states: dict[str, Any] | None) -> None:
    """At the start of training: restore this rank's saved streams, or else give rank r > 0
    its own seed (`aevb.rng.rank_seed`). Rank 0 of a fresh run is left alone."""
    device = trainer.strategy.root_device
    if not restore_rng_states(resume_states, trainer.global_rank, device):
        rng.seed_rank(run_seed(), trainer.global_rank)


class RankStreams:
    """Mixin of a LightningModule that draws its training noise from the default RNG streams:
    every rank's streams go into its checkpoints (`rng_states`; collective: Lightning saves on
    every rank), so a resumed run continues with the same noise as an uninterrupted one (data
    order and binarization are seeded by epoch already). They are restored when training
    starts, not on every load: loading a model for evaluation leaves the caller's RNG alone.
    Each hook then calls the next class's (list it before the LightningModule base)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:
            checkpoint["rng_states"] = gather_rng_states(self.trainer)
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resume_rng_states = checkpoint.get("rng_states")
        super().on_load_checkpoint(checkpoint)

    def on_train_start(self) -> None:
        """This rank's saved streams (resume), or else (fresh run) its own seed if rank > 0."""
        states = getattr(self, "_resume_rng_states", None)
        self._resume_rng_states = None
        seed_rank_streams(self.trainer, states)
        super().on_train_start()


def any_rank(flags: Tensor, trainer: L.Trainer) -> Tensor:
    """Elementwise OR of a bool tensor over all ranks (one all-reduce; no host sync)."""
    if trainer.world_size <= 1:
        return flags
    total = trainer.strategy.reduce(flags.to(torch.int32), reduce_op="sum")
    return total > 0
