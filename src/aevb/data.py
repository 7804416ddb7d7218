"""Datasets as in-memory tensors, served as index slices (no per-sample __getitem__/collate).

`ImageDataModule` loads a torchvision dataset once, holds images as one float tensor on the
training device, and serves batches with `TensorLoader`, which shuffles per epoch with a
seeded generator and shards per rank under DDP. Fixed binarizations (validation/test, static)
are drawn on the CPU, so every device and rank count sees the same binary images.
"""

from __future__ import annotations

import math
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError

import lightning as L
import torch
import torchvision
from filelock import FileLock
from torch import Tensor

from aevb.errors import DataError, one_line
from aevb.registry import BINARIZE, DATASETS
from aevb.rng import rank_seed
from aevb.step_groups import StepGroup

#: seed of the one-off binarization of validation/test images: fixed so NLLs compare across runs
EVAL_BINARIZATION_SEED = 20131220


Split = tuple[Tensor, Tensor]  # images uint8/float [N, C, H, W], labels long [N]

#: seconds a download may wait on a silent server before failing (no hang offline)
DOWNLOAD_TIMEOUT_S = 30.0


@contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    """Socket timeout for libraries (torchvision's urllib) that open connections without one."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def check_idx(path: Path, dims: int, item_shape: tuple[int, ...]) -> int:
    """Validate an IDX file of unsigned bytes (magic, item shape, size); returns its item count."""
    size = path.stat().st_size
    with path.open("rb") as f:
        magic = f.read(4)
        expected_magic = bytes([0, 0, 0x08, dims])
        if magic != expected_magic:
            raise DataError(
                f"{path} is not a {dims}-D IDX file of unsigned bytes (magic "
                f"{magic.hex() or 'none'}, expected {expected_magic.hex()}); replace it or fix "
                "data.root"
            )
        header = f.read(4 * dims)
    if len(header) < 4 * dims:
        raise DataError(f"{path} is truncated inside its header; replace it or fix data.root")
    shape = struct.unpack(f">{dims}I", header)
    if tuple(shape[1:]) != tuple(item_shape):
        raise DataError(
            f"{path} holds items of shape {tuple(shape[1:])}, expected {tuple(item_shape)}; "
            "replace it or fix data.root"
        )
    needed = 4 + 4 * dims + math.prod(shape)
    if size != needed:
        kind = "truncated" if size < needed else "longer than its header says"
        raise DataError(
            f"{path} is {kind}: {size} bytes, its header ({' x '.join(map(str, shape))}) needs "
            f"{needed}; replace it or fix data.root"
        )
    return shape[0]


def _check_mnist_files(folder: Path) -> None:
    """Header, shape and size checks of the four MNIST-layout files (torchvision only asserts)."""
    for prefix in ("train", "t10k"):
        images = check_idx(folder / f"{prefix}-images-idx3-ubyte", 3, (28, 28))
        labels = check_idx(folder / f"{prefix}-labels-idx1-ubyte", 1, ())
        if images != labels:
            raise DataError(
                f"{folder}/{prefix}-*: {images} images but {labels} labels; replace the files"
            )


def _torchvision_source(
    cls: type[torchvision.datasets.MNIST],
) -> Callable[..., tuple[Split, Split]]:
    def load(root: str, download: bool) -> tuple[Split, Split]:
        folder = Path(root) / cls.__name__ / "raw"
        files = [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
        if all((folder / f).is_file() for f in files):
            _check_mnist_files(folder)
        try:
            with _network_timeout(DOWNLOAD_TIMEOUT_S):
                splits = [cls(root, train=train, download=download) for train in (True, False)]
        except (RuntimeError, TimeoutError, ConnectionError, URLError) as err:
            reason = "download=false" if not download else f"download failed ({one_line(err, 200)})"
            raise DataError(
                f"{cls.__name__} not found: looked for {', '.join(files)} in {folder.resolve()} "
                f"({reason}); point data.root at the folder that contains {cls.__name__}/raw/"
            ) from err
        except (OSError, ValueError, AssertionError) as err:
            raise DataError(
                f"{cls.__name__} files in {folder.resolve()} are unreadable "
                f"({one_line(err, 200)}); delete them to re-download or fix data.root"
            ) from err
        return tuple((ds.data.unsqueeze(1), ds.targets.long()) for ds in splits)  # type: ignore[return-value]

    return load


#: the `aevb.registry.DATASETS` loaders (root, download) -> ((train images, labels), (test ...))
load_mnist = _torchvision_source(torchvision.datasets.MNIST)
load_fashion_mnist = _torchvision_source(torchvision.datasets.FashionMNIST)


class EpochShuffle:
    """Which rows each rank visits in an epoch: a seeded permutation per epoch, sharded per rank.

    Lightning calls `set_epoch` before every epoch (as for DistributedSampler), so the order
    depends only on (seed, epoch) and a resumed run sees the same batches.
    """

    def __init__(
        self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        # training shards have equal length (drop the remainder); eval shards cover all rows
        if self.shuffle:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))

    def indices(self) -> Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
            return order[self.rank : len(self) * self.world_size : self.world_size]
        return torch.arange(self.rank, self.n, self.world_size)


class TensorLoader:
    """Iterable of (images, labels) batches sliced from tensors that already live on the device.

    With `binarize=True` each batch is a fresh Bernoulli sample of its grey levels (dynamic
    binarization), drawn from a generator on the device seeded by (seed, epoch, rank): training
    noise, different on every rank. With `with_index=True` batches are (images, labels, rows),
    rows = each image's row in its split, which keys its evaluation noise (`aevb.rng`).
    Exposes `sampler` (with `set_epoch`) and `batch_sampler = None` the way Lightning inspects a
    DataLoader.

    With `position` (the number of training batches the run has completed, read when an epoch's
    iteration starts; None outside a fit, where `set_epoch` decides), the loader places itself:
    epoch = position // batches per epoch, and it skips the batches of that epoch already
    trained. The order and the binarization noise then depend only on how far the run got, not
    on Lightning's epoch counter, which a step-limited run (`budget_samples`) resumed from an
    end-of-epoch checkpoint advances twice (Lightning 2.6), so a resumed run sees exactly the
    batches an uninterrupted one would.

    With `group` > 1 it yields `aevb.step_groups.StepGroup`s of up to `group` consecutive
    batches (never across an epoch end; len() counts groups): the same batches, grouped.
    """

    batch_sampler = None

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        sampler: EpochShuffle,
        binarize: bool = False,
        drop_last: bool = False,
        with_index: bool = False,
        position: Callable[[], int | None] | None = None,
        group: int = 1,
    ) -> None:
        self.images, self.labels = images, labels
        self.group = group
        self.batch_size, self.sampler = batch_size, sampler
        self.binarize, self.drop_last, self.with_index = binarize, drop_last, with_index
        self.position = position

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.batches_per_epoch / self.group)

    def __iter__(self) -> Iterator[tuple[Tensor, ...] | StepGroup]:
        if self.group == 1:
            yield from self._batches()
            return
        group = StepGroup()
        for batch in self._batches():
            group.append(batch)
            if len(group) == self.group:
                yield group
                group = StepGroup()
        if group:
            yield group

    def _batches(self) -> Iterator[tuple[Tensor, ...]]:
        skip, done = 0, self.position() if self.position is not None else None
        if done is not None and self.batches_per_epoch > 0:
            epoch, skip = divmod(done, self.batches_per_epoch)
            self.sampler.set_epoch(epoch)
        idx = self.sampler.indices().to(self.images.device)
        gen = None
        if self.binarize:
            gen = torch.Generator(device=self.images.device)
            seed = self.sampler.seed * 7_919 + self.sampler.epoch + 1
            gen.manual_seed(rank_seed(seed, self.sampler.rank))
        for b in range(self.batches_per_epoch):
            rows = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images.index_select(0, rows)
            if gen is not None:
                x = bernoulli_sample(x, gen)  # drawn for skipped batches too: same stream
            if b < skip:
                continue
            if self.with_index:
                yield x, self.labels.index_select(0, rows), rows
            else:
                yield x, self.labels.index_select(0, rows)


def _unit(images: Tensor) -> Tensor:
    """Pixel values as float32 in [0, 1] (uint8 / 255; float input is taken as already scaled)."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def bernoulli_sample(p: Tensor, generator: torch.Generator) -> Tensor:
    """x ~ Bernoulli(p) elementwise as 1[U < p], U ~ Uniform[0, 1).

    Same distribution as torch.bernoulli(p, generator=...), about 3x faster on CPU.
    """
    u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


def binarize_once(images: Tensor, seed: int) -> Tensor:
    """One fixed Bernoulli sample of grey-level images (static binarization), drawn on the CPU
    and moved to the images' device: row i depends only on (seed, i), on every device."""
    cpu = bernoulli_sample(images.cpu(), torch.Generator().manual_seed(seed))
    return cpu.to(images.device)


@contextmanager
def download_lock(root: str | Path, name: str, download: bool) -> Iterator[None]:
    """Hold an exclusive lock on `<root>/.<name>.lock` while a dataset may be downloaded. Every
    process that loads it takes the lock (every rank of every node, every job of an array), so
    one downloads and the others wait, then read the finished files. No lock without download
    or in a read-only root (nothing can be written there)."""
    lock = FileLock(Path(root) / f".{name}.lock")
    try:
        if download:
            Path(root).mkdir(parents=True, exist_ok=True)
            lock.acquire()
    except OSError:
        pass
    try:
        yield
    finally:
        if lock.is_locked:
            lock.release()


class ImageDataModule(L.LightningDataModule):
    """MNIST-like image data held in memory as float tensors in [0, 1], shape [N, C, H, W].

    Args mirror the `data` config group: `name` (see `aevb.registry.DATASETS`), `root`, `download`,
    `batch_size`, `eval_batch_size`, `val_size` (held out of the training set by a permutation
    seeded with `seed`), `num_train` (optional subset of the remaining training images),
    `seed`, `binarize` (none | dynamic | static). Validation/test images are binarized once with
    EVAL_BINARIZATION_SEED whenever binarize != none. `steps_per_call` (the run's, not a `data`
    key) groups training batches for `aevb.step_groups`.
    """

    def __init__(
        self,
        name: str = "mnist",
        root: str = "data",
        download: bool = True,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        num_train: int | None = None,
        seed: int = 0,
        binarize: str = "dynamic",
        steps_per_call: int = 1,
    ) -> None:
        super().__init__()
        if name not in DATASETS:
            raise ValueError(f"data.name must be one of {sorted(DATASETS)}, got {name!r}")
        if binarize not in BINARIZE:
            raise ValueError(f"data.binarize must be one of {BINARIZE}, got {binarize!r}")
        self.name, self.root, self.download = name, str(root), download
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.num_train, self.seed = val_size, num_train, seed
        self.binarize, self.steps_per_call = binarize, steps_per_call
        self._raw: tuple[Split, Split] | None = None
        self._loaded = False

    def prepare_data(self) -> None:
        """Download if allowed (under `download_lock`, so any process may call it)."""
        self._raw = self._load()

    def _load(self) -> tuple[Split, Split]:
        with download_lock(self.root, self.name, self.download):
            return DATASETS[self.name](self.root, self.download)

    def train_size(self) -> int:
        """N, the training images `setup` keeps (after the validation split and `num_train`),
        known before a trainer is attached: loads the raw data, as `prepare_data`."""
        if self._loaded:
            return len(self.train_images)
        if self._raw is None:
            self._raw = self._load()
        rest = len(self._raw[0][0]) - self.val_size
        return rest if self.num_train is None else min(self.num_train, rest)

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        raw = self._raw or self._load()
        self._raw = None
        (train_x, train_y), (test_x, test_y) = raw
        device = self._device()
        train_x, test_x = train_x.to(device), test_x.to(device)  # uint8 until split: less memory
        train_y, test_y = train_y.to(device), test_y.to(device)
        if not 0 <= self.val_size < len(train_x):
            raise ValueError(
                f"data.val_size must be in [0, {len(train_x) - 1}], got {self.val_size}"
            )
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.seed))
        val_rows, train_rows = order[: self.val_size], order[self.val_size :]
        if self.num_train is not None:
            if not 0 < self.num_train <= len(train_rows):
                raise ValueError(
                    f"data.num_train must be in [1, {len(train_rows)}], got {self.num_train}"
                )
            train_rows = train_rows[: self.num_train]
        val_rows, train_rows = val_rows.to(device), train_rows.to(device)
        self.train_images, self.train_labels = _unit(train_x[train_rows]), train_y[train_rows]
        self.val_images, self.val_labels = _unit(train_x[val_rows]), train_y[val_rows]
        self.test_images, self.test_labels = _unit(test_x), test_y
        if self.binarize == "static":
            self.train_images = binarize_once(self.train_images, self.seed)
        if self.binarize != "none":
            self.val_images = binarize_once(self.val_images, EVAL_BINARIZATION_SEED)
            self.test_images = binarize_once(self.test_images, EVAL_BINARIZATION_SEED + 1)
        self._loaded = True

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """[C, H, W] of one image (available after setup)."""
        return tuple(self.test_images.shape[1:])  # type: ignore[return-value]

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, images: Tensor, labels: Tensor, train: bool) -> TensorLoader:
        rank, world = self._rank()
        sampler = EpochShuffle(
            len(images), shuffle=train, seed=self.seed, rank=rank, world_size=world
        )
        return TensorLoader(
            images,
            labels,
            self.batch_size if train else self.eval_batch_size,
            sampler,
            binarize=train and self.binarize == "dynamic",
            drop_last=False,
            with_index=not train,
            position=self._batches_trained if train else None,
            group=self.steps_per_call if train else 1,
        )

    def _batches_trained(self) -> int | None:
        """Training batches the attached trainer has completed (restored on resume); None when
        no trainer is fitting."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return None
        if self.steps_per_call > 1:  # a Lightning step trains a group: count optimiser steps
            return trainer.global_step
        return trainer.fit_loop.epoch_loop.batch_progress.total.completed

    def train_dataloader(self) -> TensorLoader:
        return self._loader(self.train_images, self.train_labels, train=True)

    def val_dataloader(self) -> TensorLoader:
        return self._loader(self.val_images, self.val_labels, train=False)

    def test_dataloader(self) -> TensorLoader:
        return self._loader(self.test_images, self.test_labels, train=False)
