"""Random streams: which numbers are the same everywhere, and which differ per rank.

Two kinds of noise (docs/sweeps.md, "Same numbers everywhere"):

- *Training noise* (z = mu + sigma * eps, dynamic binarization, wake-sleep's dreams) comes from
  the process's default generators. Rank 0 keeps the run's seed, so a single-process run is
  unchanged; rank r > 0 is re-seeded with `rank_seed(seed, r)`, so ranks draw different noise.
  Its state is saved per rank in checkpoints (`aevb.distributed.gather_rng_states`).
- *Evaluation noise* (binarized validation/test sets, importance samples) is drawn from CPU
  generators keyed by the example's row in its split (`example_seed`, `KeyedNormal`) and then
  moved to the device, so it is the same on CPU, CUDA and MPS and for any number of ranks.

Pure torch: no Lightning, no files.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*words: int) -> int:
    """A 32-bit seed hashed from integers (splitmix64): torch's CPU generator (mt19937) keeps
    only the low 32 bits of a seed, so `seed + i` style offsets would collide across streams."""
    h = 0
    for w in words:
        h = _splitmix64(h ^ (int(w) & _MASK64))
    return h & 0xFFFFFFFF


def rank_seed(seed: int, rank: int) -> int:
    """The training seed of global rank `rank`: the run's seed on rank 0, a hash of (seed, rank)
    elsewhere (not seed + rank, which would repeat the streams of a seed sweep's other runs)."""
    return int(seed) if rank == 0 else mix_seed(seed, rank)


def seed_rank(seed: int, rank: int) -> None:
    """Re-seed this process's default streams (torch CPU and accelerators, numpy, random) for
    global rank `rank` > 0; rank 0 is left alone, so it continues exactly as a single process."""
    if rank == 0:
        return
    s = rank_seed(seed, rank)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


# ----- the default streams of one device ------------------------------------------------------
def get_state(device: torch.device) -> Tensor:
    """State of the default generator that draws on `device` (CPU, CUDA or MPS)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return torch.get_rng_state()


def set_state(device: torch.device, state: Tensor) -> None:
    """Restore a state returned by `get_state(device)`."""
    state = state.cpu()
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)
    else:
        torch.set_rng_state(state)


@contextmanager
def forked_streams(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block on the default CPU stream and `device`'s stream set to `seed`, then restore
    both: the caller's (training) streams continue as if the block had not run.

    Unlike `torch.manual_seed` inside `torch.random.fork_rng(devices=[])`, this never touches
    another device's stream (manual_seed re-seeds every CUDA device, unforked ones included).
    """
    devices = {torch.device("cpu"), torch.device(device)}
    if torch.device(device).type == "cuda" and torch.device(device).index is None:
        devices = {torch.device("cpu"), torch.device("cuda", torch.cuda.current_device())}
    saved = {d: get_state(d) for d in devices}
    try:
        for d in devices:
            gen = torch.Generator(device=d.type if d.type != "cuda" else d)
            set_state(d, gen.manual_seed(seed).get_state())
        yield
    finally:
        for d, state in saved.items():
            set_state(d, state)


# ----- evaluation noise keyed by example --------------------------------------------------------
def example_seed(seed: int, index: int) -> int:
    """The seed of example `index`'s evaluation noise (`index`: its row in its split)."""
    return mix_seed(seed, index)


class KeyedNormal:
    """eps[j, b] ~ N(0, I_dim): importance sample j of example `index[b]`, from a CPU generator
    of its own (`example_seed(seed, index[b])`) read in blocks of `BLOCK` draws, so a value
    depends only on (seed, index, j): not on the device, the batch, the chunking or the ranks.
    The first k draws are the same for every k (IWAE_k bounds of one run are nested).

    `take(start, count)` must be called with non-decreasing `start` (samples in order).
    """

    #: draws per generator call: a fixed unit, so the values never depend on the call pattern
    BLOCK = 64

    def __init__(self, seed: int, index: Sequence[int] | Tensor, dim: int) -> None:
        rows = index.tolist() if isinstance(index, Tensor) else list(index)
        self.generators = [torch.Generator().manual_seed(example_seed(seed, int(i))) for i in rows]
        self.dim = dim
        self._buf = torch.empty(0, len(rows), dim)
        self._lo = 0  # sample index of _buf[0]

    def take(self, start: int, count: int) -> Tensor:
        """Draws start, ..., start + count - 1 of every example: CPU Tensor[count, B, dim]."""
        if start < self._lo:
            raise ValueError(f"KeyedNormal reads forward only: start {start} < {self._lo}")
        drop = min(start - self._lo, self._buf.shape[0])
        self._buf, self._lo = self._buf[drop:], self._lo + drop
        blocks = [self._buf]
        hi = self._lo + self._buf.shape[0]
        while hi < start + count:
            block = torch.stack(
                [torch.randn(self.BLOCK, self.dim, generator=g) for g in self.generators], dim=1
            )
            blocks.append(block)
            hi += self.BLOCK
        self._buf = torch.cat(blocks) if len(blocks) > 1 else self._buf
        if self._lo < start:  # whole blocks skipped (take was not called for them)
            self._buf, self._lo = self._buf[start - self._lo :], start
        return self._buf[:count]
