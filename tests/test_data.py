"""ImageDataModule and TensorLoader on tiny IDX files in torchvision's raw layout."""

from __future__ import annotations

import pytest
import torch

from aevb.data import DataError, EpochShuffle, ImageDataModule, TensorLoader

from .conftest import SHARED_DATA


def _dm(root, **kw) -> ImageDataModule:
    dm = ImageDataModule(root=str(root), download=False, val_size=100, batch_size=64, **kw)
    dm.setup()
    return dm


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_shapes_ranges_and_split_sizes(data_root, name) -> None:
    dm = _dm(data_root, name=name, binarize="none")
    assert dm.data_shape == (1, 28, 28)
    assert len(dm.train_images) == 500 and len(dm.val_images) == 100 and len(dm.test_images) == 200
    for t in (dm.train_images, dm.val_images, dm.test_images):
        assert t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1
    assert len(torch.unique(dm.train_images)) > 2  # grey levels kept
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,) and y.dtype == torch.long
    assert len(dm.train_dataloader()) == 8  # ceil(500 / 64)
    assert sum(len(b[0]) for b in dm.test_dataloader()) == 200


def test_num_train_subset_and_seeded_split(data_root) -> None:
    a = _dm(data_root, num_train=50, seed=3)
    b = _dm(data_root, num_train=50, seed=3)
    c = _dm(data_root, num_train=50, seed=4)
    assert len(a.train_images) == 50
    torch.testing.assert_close(a.val_labels, b.val_labels)
    assert not torch.equal(a.val_labels, c.val_labels)


def _epoch(loader: TensorLoader, epoch: int) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    return torch.cat([x for x, _ in loader])


def test_dynamic_binarization_changes_per_epoch_but_eval_sets_do_not(data_root) -> None:
    dm = _dm(data_root, binarize="dynamic")
    loader = dm.train_dataloader()
    e0, e0_again, e1 = _epoch(loader, 0), _epoch(loader, 0), _epoch(loader, 1)
    assert set(torch.unique(e0).tolist()) == {0.0, 1.0}
    torch.testing.assert_close(e0, e0_again)  # seeded by (seed, epoch): resumable
    assert not torch.equal(e0, e1)
    # the same image is binarized differently in two epochs
    loader.sampler.shuffle = False
    assert not torch.equal(_epoch(loader, 0), _epoch(loader, 1))
    # train images stay grey levels; val/test are binarized once with a fixed seed
    assert len(torch.unique(dm.train_images)) > 2
    other = _dm(data_root, binarize="dynamic", seed=9)
    torch.testing.assert_close(dm.test_images, other.test_images)
    assert set(torch.unique(dm.test_images).tolist()) == {0.0, 1.0}
    assert set(torch.unique(dm.val_images).tolist()) == {0.0, 1.0}


def test_static_binarization_is_fixed(data_root) -> None:
    dm = _dm(data_root, binarize="static")
    assert set(torch.unique(dm.train_images).tolist()) == {0.0, 1.0}
    loader = dm.train_dataloader()
    loader.sampler.shuffle = False
    torch.testing.assert_close(_epoch(loader, 0), _epoch(loader, 1))
    torch.testing.assert_close(dm.train_images, _dm(data_root, binarize="static").train_images)


def test_shuffle_is_seeded_per_epoch_and_sharded_per_rank() -> None:
    s = EpochShuffle(10, shuffle=True, seed=1)
    s.set_epoch(0)
    a = s.indices()
    s.set_epoch(1)
    assert not torch.equal(a, s.indices())
    s.set_epoch(0)
    torch.testing.assert_close(a, s.indices())
    shards = []
    for rank in range(3):
        r = EpochShuffle(10, shuffle=True, seed=1, rank=rank, world_size=3)
        r.set_epoch(0)
        shards.append(r.indices())
        assert len(r) == 3 == len(shards[-1])
    merged = torch.cat(shards)
    assert len(torch.unique(merged)) == 9  # disjoint, equal-sized shards
    evals = [
        EpochShuffle(10, shuffle=False, seed=0, rank=r, world_size=3).indices() for r in range(3)
    ]
    assert sorted(torch.cat(evals).tolist()) == list(range(10))  # eval covers every row once


def test_missing_files_give_one_line_error(tmp_path) -> None:
    dm = ImageDataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError) as err:
        dm.setup()
    msg = str(err.value)
    assert "\n" not in msg
    assert "train-images-idx3-ubyte" in msg and "nowhere" in msg and "data.root" in msg


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST not present")
def test_real_mnist_statistics() -> None:
    dm = ImageDataModule(root=str(SHARED_DATA), download=False, binarize="none")
    dm.setup()
    assert len(dm.train_images) == 55_000 and len(dm.val_images) == 5_000
    full = torch.cat([dm.train_images, dm.val_images])
    assert abs(full.mean().item() - 0.1307) < 1e-3


def test_bernoulli_sample_has_the_bernoulli_distribution() -> None:
    from aevb.data import bernoulli_sample

    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]).repeat(40_000, 1)
    x = bernoulli_sample(p, torch.Generator().manual_seed(0))
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    freq = x.mean(0)
    se = (p[0] * (1 - p[0]) / 40_000).sqrt()
    assert torch.all((freq - p[0]).abs() <= 4 * se + 1e-9), freq
