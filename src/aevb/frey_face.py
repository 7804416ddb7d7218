"""Frey Face (Roweis): 1965 grey-level 28x20 video frames of one face, in torchvision's style.

Layout: `<root>/FreyFace/raw/frey_rawface.mat` (MATLAB file, key `ff`: uint8 [560, 1965], one
image per column, each column a 28x20 image in row-major order). Downloaded from `URL` when
absent and `download=True`, verified by md5. There is no official split; `FreyFace(train=...)`
uses a fixed-seed permutation (`SPLIT_SEED`) with the last `TEST_SIZE` images as the test set.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets.utils import check_integrity

from aevb.errors import DataError, one_line

URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
FILENAME = "frey_rawface.mat"
MD5 = "5aeb024d42b8a6091f30e5eb18c8a48d"
KEY = "ff"
HEIGHT, WIDTH = 28, 20
NUM_IMAGES = 1965
#: images in the fixed test split (the remaining 1765 are the training set)
TEST_SIZE = 200
SPLIT_SEED = 20131220
#: seconds before a download attempt gives up
DOWNLOAD_TIMEOUT_S = 10.0


def read_frey_mat(path: str | Path) -> Tensor:
    """Read `ff` from a frey_rawface.mat file: uint8 Tensor[1965, 1, 28, 20].

    Raises DataError (one line) when the file is unreadable, lacks `ff` or has the wrong shape.
    """
    import scipy.io  # late: only this dataset needs scipy

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except (
        scipy.io.matlab.MatReadError,
        OSError,
        ValueError,
        TypeError,
        NotImplementedError,
    ) as err:
        raise DataError(f"{path} is not a readable MATLAB file ({one_line(err, 200)})") from err
    if KEY not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path} has no key {KEY!r} (keys: {keys}); expected Roweis' Frey Face")
    ff = np.asarray(mat[KEY])
    if ff.ndim != 2 or ff.shape[0] != HEIGHT * WIDTH:
        raise DataError(
            f"{path}: {KEY!r} must be a {HEIGHT * WIDTH}x{NUM_IMAGES} uint8 matrix "
            f"(one {HEIGHT}x{WIDTH} image per column), got shape {list(ff.shape)}"
        )
    if ff.dtype != np.uint8:
        raise DataError(f"{path}: {KEY!r} must be uint8 grey levels, got dtype {ff.dtype}")
    images = np.ascontiguousarray(ff.T).reshape(-1, 1, HEIGHT, WIDTH)  # columns, row-major
    return torch.from_numpy(images.copy())


def download_file(folder: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch frey_rawface.mat into `folder` (atomic rename) and check its md5."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FILENAME
    tmp = folder / f".{FILENAME}.part"
    try:
        with urllib.request.urlopen(URL, timeout=timeout) as response:
            tmp.write_bytes(response.read())
    except OSError as err:  # URLError and timeouts are OSErrors
        tmp.unlink(missing_ok=True)
        raise DataError(f"FreyFace download from {URL} failed ({one_line(err, 200)})") from err
    if not check_integrity(str(tmp), MD5):
        tmp.unlink(missing_ok=True)
        raise DataError(f"FreyFace download from {URL} has the wrong md5 (expected {MD5})")
    tmp.replace(target)
    return target


class FreyFace(torch.utils.data.Dataset):
    """Frey Face as a torchvision-style dataset: `data` uint8 [N, 1, 28, 20], `targets` zeros.

    Args:
        root: folder that contains `FreyFace/raw/frey_rawface.mat`.
        train: the 1765-image training split (True) or the 200-image test split (False).
        download: fetch the file from `URL` when absent.
        check_md5: also refuse an existing file whose md5 differs from `MD5` (downloads are
            always checked; as in torchvision, an existing file is otherwise validated by its
            contents: key `ff`, 560 rows of uint8).
    """

    def __init__(
        self, root: str | Path, train: bool = True, download: bool = False, check_md5: bool = False
    ) -> None:
        self.root, self.train = Path(root), train
        path = self.raw_folder / FILENAME
        if not path.is_file():
            if not download:
                raise DataError(
                    f"FreyFace not found: looked for {FILENAME} in {self.raw_folder.resolve()} "
                    "(download=false); point data.root at the folder that contains FreyFace/raw/"
                )
            download_file(self.raw_folder)
        if check_md5 and not check_integrity(str(path), MD5):
            raise DataError(
                f"{path.resolve()} has the wrong md5 (expected {MD5}); delete it to re-download"
            )
        images = read_frey_mat(path)
        rows = split_rows(len(images), train)
        self.data = images[rows]
        self.targets = torch.zeros(len(self.data), dtype=torch.long)

    @property
    def raw_folder(self) -> Path:
        return self.root / "FreyFace" / "raw"

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """(image float [1, 28, 20] in [0, 1], 0)."""
        return self.data[index].float() / 255.0, 0


def split_rows(n: int, train: bool, test_size: int = TEST_SIZE) -> Tensor:
    """Indices of the train (n - test_size images) or test split: a permutation seeded by
    SPLIT_SEED, test = its last `test_size` entries (capped at n // 2 for tiny files)."""
    test_size = min(test_size, n // 2)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[: n - test_size] if train else order[n - test_size :]


def load_splits(
    root: str, download: bool, check_md5: bool = False
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The `aevb.registry.DATASETS` loader: ((train images, labels), (test images, labels))."""
    splits = [FreyFace(root, train, download, check_md5) for train in (True, False)]
    return tuple((ds.data, ds.targets) for ds in splits)  # type: ignore[return-value]
