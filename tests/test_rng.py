"""aevb.rng: seeds hashed per stream, per-rank training seeds, forked streams, keyed noise."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from aevb.rng import (
    KeyedNormal,
    example_seed,
    forked_streams,
    get_state,
    mix_seed,
    rank_seed,
    seed_rank,
    set_state,
)

CPU = torch.device("cpu")


def test_mix_seed_is_splitmix64_cut_to_32_bits() -> None:
    # SplitMix64 seeded with 0 outputs 0xE220A8397B1DCDAF, then 0x6E789E6AA1B965F4 (Vigna's
    # reference); mix_seed(0) is the first, mix_seed(0, 0) hashes it once more
    assert mix_seed(0) == 0x7B1DCDAF
    assert mix_seed() == 0
    assert all(0 <= mix_seed(s, i) < 2**32 for s in range(5) for i in range(5))
    # seed + i offsets would collide across streams; hashed seeds do not
    assert len({mix_seed(s, i) for s in range(50) for i in range(50)}) == 2500
    assert mix_seed(1, 2) != mix_seed(2, 1)


def test_rank_seeds_keep_rank_zero_and_differ_elsewhere() -> None:
    assert rank_seed(42, 0) == 42
    seeds = {rank_seed(s, r) for s in range(20) for r in range(1, 9)}
    assert len(seeds) == 160 and not seeds & set(range(20))  # no overlap with other runs' seeds


def test_seed_rank_reseeds_every_default_stream_except_on_rank_zero() -> None:
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        torch.manual_seed(7)
        before = torch.get_rng_state()
        seed_rank(42, 0)
        assert torch.equal(torch.get_rng_state(), before)  # rank 0 continues as one process
        seed_rank(42, 3)
        s = rank_seed(42, 3)
        assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(s)))
        assert np.random.rand() == np.random.RandomState(s).rand()
        assert random.random() == random.Random(s).random()
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


def test_cpu_state_round_trips() -> None:
    saved = get_state(CPU)
    first = torch.rand(3)
    set_state(CPU, saved)
    assert torch.equal(torch.rand(3), first)


def test_forked_streams_run_on_the_seed_and_restore_the_callers_stream() -> None:
    torch.manual_seed(123)
    before = get_state(CPU)
    with forked_streams(5):
        inside = torch.rand(3)
    assert torch.equal(inside, torch.rand(3, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(get_state(CPU), before)
    with pytest.raises(RuntimeError), forked_streams(6):
        torch.rand(3)
        raise RuntimeError("inside")
    assert torch.equal(get_state(CPU), before)  # restored on an exception too


def test_example_seed_hashes_seed_and_row() -> None:
    assert example_seed(3, 17) == mix_seed(3, 17)
    assert example_seed(3, 17) != example_seed(3, 18) != example_seed(4, 17)


def test_keyed_normal_draws_blocks_from_each_examples_own_generator() -> None:
    block = KeyedNormal.BLOCK
    got = KeyedNormal(4, [11, 2], dim=3).take(0, block + 5)  # [block + 5, 2, 3]
    for b, row in enumerate((11, 2)):
        g = torch.Generator().manual_seed(example_seed(4, row))
        expected = torch.cat([torch.randn(block, 3, generator=g) for _ in range(2)])
        assert torch.equal(got[:, b], expected[: block + 5])


def test_keyed_noise_depends_only_on_seed_example_and_draw() -> None:
    whole = KeyedNormal(0, [5, 9, 2], dim=3).take(0, 200)  # [200, 3, 3]
    pieces = KeyedNormal(0, [5, 9, 2], dim=3)
    parts = [pieces.take(0, 3), pieces.take(3, 70), pieces.take(73, 1), pieces.take(140, 60)]
    assert torch.equal(torch.cat(parts[:3]), whole[:74])
    assert torch.equal(parts[3], whole[140:])  # skipped draws are skipped, not shifted
    alone = KeyedNormal(0, [9], dim=3).take(0, 200)
    assert torch.equal(alone[:, 0], whole[:, 1])  # independent of the other rows of the batch
    assert not torch.equal(KeyedNormal(1, [9], dim=3).take(0, 200), alone)  # the seed matters
    assert not torch.equal(whole[:, 0], whole[:, 1])


def test_keyed_normal_reads_forward_only() -> None:
    noise = KeyedNormal(0, torch.tensor([1, 2]), dim=2)
    noise.take(10, 5)
    with pytest.raises(ValueError, match="forward only"):
        noise.take(3, 1)
