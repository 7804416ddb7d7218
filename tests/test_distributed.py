"""aevb.distributed: per-rank seeds and RNG states in checkpoints, decisions taken by every rank.

A trainer is faked with the few attributes these functions read; a 2-rank all-gather or
all-reduce is faked by a strategy that holds the other rank's tensor. Real DDP: test_ddp.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from aevb.distributed import (
    RankStreams,
    any_rank,
    gather_rng_states,
    restore_rng_states,
    run_seed,
    seed_rank_streams,
)
from aevb.rng import rank_seed

CPU = torch.device("cpu")


def _state(seed: int) -> Tensor:
    return torch.Generator().manual_seed(seed).get_state()


class _TwoRanks:
    """The strategy of rank 0 of 2 whose other rank holds `other`."""

    root_device = CPU

    def __init__(self, other: Tensor) -> None:
        self.other = other

    def all_gather(self, t: Tensor) -> Tensor:
        return torch.stack([t, self.other.to(t.dtype)])

    def reduce(self, t: Tensor, reduce_op: str = "sum") -> Tensor:
        assert reduce_op == "sum"
        return t + self.other.to(t.dtype)


def _fake_trainer(world_size: int = 1, rank: int = 0, strategy: object = None) -> SimpleNamespace:
    strategy = strategy or SimpleNamespace(root_device=CPU)
    return SimpleNamespace(world_size=world_size, global_rank=rank, strategy=strategy)


@pytest.fixture(autouse=True)
def _keep_rng() -> object:
    saved = torch.get_rng_state()
    yield
    torch.set_rng_state(saved)


def test_run_seed_is_lightnings_global_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "1234")
    assert run_seed() == 1234
    monkeypatch.delenv("PL_GLOBAL_SEED")
    torch.manual_seed(99)
    assert run_seed() == 99


def test_one_process_records_its_states_at_the_top_and_as_rank_zero() -> None:
    torch.set_rng_state(_state(3))
    record = gather_rng_states(_fake_trainer())
    assert torch.equal(record["cpu"], _state(3))
    assert len(record["ranks"]) == 1 and torch.equal(record["ranks"][0]["cpu"], _state(3))


def test_two_ranks_record_each_ranks_states() -> None:
    torch.set_rng_state(_state(1))
    record = gather_rng_states(_fake_trainer(2, strategy=_TwoRanks(_state(2))))
    assert len(record["ranks"]) == 2
    assert torch.equal(record["ranks"][0]["cpu"], _state(1))
    assert torch.equal(record["ranks"][1]["cpu"], _state(2))
    assert torch.equal(record["cpu"], _state(1))  # rank 0's also at the top (old format)


def test_each_rank_restores_its_own_rng_state() -> None:
    states = [_state(s) for s in (1, 2)]
    record = {"cpu": states[0], "ranks": [{"cpu": states[0]}, {"cpu": states[1]}]}
    for rank in (0, 1):
        assert restore_rng_states(record, rank, CPU)
        assert torch.equal(torch.get_rng_state(), states[rank])
    assert restore_rng_states({"cpu": states[1]}, 0, CPU)  # old format
    assert torch.equal(torch.get_rng_state(), states[1])
    assert not restore_rng_states({"cpu": states[1]}, 1, CPU)  # re-seeded
    assert not restore_rng_states(None, 0, CPU) and not restore_rng_states(record, 2, CPU)


def test_a_fresh_run_reseeds_ranks_above_zero_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    torch.set_rng_state(_state(5))
    seed_rank_streams(_fake_trainer(2, rank=0), None)
    assert torch.equal(torch.get_rng_state(), _state(5))
    seed_rank_streams(_fake_trainer(2, rank=1), None)
    assert torch.equal(torch.get_rng_state(), _state(rank_seed(42, 1)))
    seed_rank_streams(_fake_trainer(2, rank=1), {"ranks": [{"cpu": _state(7)}, {"cpu": _state(8)}]})
    assert torch.equal(torch.get_rng_state(), _state(8))  # a resume restores instead


def test_rank_streams_save_and_restore_the_training_noise() -> None:
    calls = []

    class Hooks:  # the LightningModule's hooks after the mixin's
        def on_save_checkpoint(self, checkpoint: dict) -> None:
            calls.append("save")

        def on_load_checkpoint(self, checkpoint: dict) -> None:
            calls.append("load")

        def on_train_start(self) -> None:
            calls.append("train_start")

    class Module(RankStreams, Hooks):
        _trainer = trainer = _fake_trainer()

    saved, module = {}, Module()
    torch.set_rng_state(_state(11))
    module.on_save_checkpoint(saved)
    expected = torch.rand(5)  # the noise after the checkpoint
    torch.manual_seed(0)
    module.on_load_checkpoint(saved)
    assert torch.equal(torch.get_rng_state(), _state(0))  # loading leaves the caller's RNG alone
    module.on_train_start()  # training start restores it
    assert torch.equal(torch.rand(5), expected)
    unbound, empty = Module(), {}
    unbound._trainer = None  # a model loaded for evaluation saves no streams
    unbound.on_save_checkpoint(empty)
    assert empty == {}
    assert calls == ["save", "load", "train_start", "save"]  # each hook calls the next class's


def test_any_rank_is_an_or_over_ranks() -> None:
    flags = torch.tensor([True, False, False])
    assert torch.equal(any_rank(flags, _fake_trainer()), flags)
    other = torch.tensor([False, False, True])
    both = any_rank(flags, _fake_trainer(2, strategy=_TwoRanks(other)))
    assert both.tolist() == [True, False, True]
