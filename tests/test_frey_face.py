"""Frey Face: the .mat layout, the fixed split, one-line errors, download, the DataModule."""

from __future__ import annotations

import hashlib
import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from aevb import frey_face
from aevb.data import DataError, ImageDataModule
from aevb.frey_face import FreyFace, read_frey_mat, split_rows
from aevb.registry import DATASETS

from .conftest import SHARED_DATA


def synthetic_ff(n: int = 60, seed: int = 0) -> np.ndarray:
    """A 560 x n uint8 matrix laid out like `ff`: column j is a 28x20 face, row-major."""
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, size=(n, 28, 20)).astype(np.uint8)
    faces[:, 0, 0] = np.arange(n) % 256  # tag each face so tests can find it
    return faces.reshape(n, 560).T.copy()


def write_frey_mat(root: Path, n: int = 60, ff: np.ndarray | None = None, **extra: object) -> Path:
    """Write `root/FreyFace/raw/frey_rawface.mat` with key ff (or `extra` keys only)."""
    path = root / "FreyFace" / "raw" / "frey_rawface.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = dict(extra) if extra else {"ff": synthetic_ff(n) if ff is None else ff}
    scipy.io.savemat(path, content)
    return path


def test_reads_columns_as_row_major_28x20_images(tmp_path: Path) -> None:
    ff = synthetic_ff(40)
    write_frey_mat(tmp_path, ff=ff)
    images = read_frey_mat(tmp_path / "FreyFace" / "raw" / "frey_rawface.mat")
    assert images.dtype == torch.uint8 and images.shape == (40, 1, 28, 20)
    for j in (0, 7, 39):
        expected = ff[:, j].reshape(28, 20)  # row-major: pixel (r, c) is row 20 r + c of ff
        assert np.array_equal(images[j, 0].numpy(), expected)
    assert np.array_equal(images[:, 0].numpy(), ff.T.reshape(-1, 28, 20))


def test_fixed_split_is_disjoint_complete_and_seeded(tmp_path: Path) -> None:
    write_frey_mat(tmp_path, n=60)
    train, test = FreyFace(tmp_path, train=True), FreyFace(tmp_path, train=False)
    assert len(train) == 30 and len(test) == 30  # test = min(200, n // 2)
    tags = sorted(train.data[:, 0, 0, 0].tolist() + test.data[:, 0, 0, 0].tolist())
    assert tags == list(range(60))
    again = FreyFace(tmp_path, train=False)
    assert torch.equal(again.data, test.data)
    full = split_rows(1965, train=True), split_rows(1965, train=False)
    assert (len(full[0]), len(full[1])) == (1765, 200)
    x, label = train[0]
    assert x.shape == (1, 28, 20) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert label == 0


def test_missing_file_without_download_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        FreyFace(tmp_path, download=False)
    msg = str(err.value)
    assert "\n" not in msg and "frey_rawface.mat" in msg and "download=false" in msg
    assert "FreyFace/raw" in msg


def test_missing_key_and_wrong_shape_are_refused(tmp_path: Path) -> None:
    write_frey_mat(tmp_path / "a", faces=np.zeros((560, 3), np.uint8))
    with pytest.raises(DataError, match=r"has no key 'ff' \(keys: \['faces'\]\)"):
        FreyFace(tmp_path / "a")
    write_frey_mat(tmp_path / "b", ff=np.zeros((28, 20), np.uint8))
    with pytest.raises(DataError, match=r"560x1965 uint8 matrix .* got shape \[28, 20\]"):
        FreyFace(tmp_path / "b")
    write_frey_mat(tmp_path / "c", ff=np.zeros((560, 4), np.float64))
    with pytest.raises(DataError, match="must be uint8"):
        FreyFace(tmp_path / "c")
    bad = tmp_path / "d" / "FreyFace" / "raw" / "frey_rawface.mat"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        FreyFace(tmp_path / "d")


def test_md5_check_on_request(tmp_path: Path) -> None:
    write_frey_mat(tmp_path)
    FreyFace(tmp_path)  # contents are valid: accepted without md5 (as torchvision does)
    with pytest.raises(DataError, match=f"wrong md5 \\(expected {frey_face.MD5}\\)"):
        FreyFace(tmp_path, check_md5=True)


class _Response(io.BytesIO):
    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


def test_download_verifies_md5_and_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_frey_mat(tmp_path / "src")
    payload = (tmp_path / "src" / "FreyFace" / "raw" / "frey_rawface.mat").read_bytes()
    calls: list[tuple[str, float]] = []

    def fake_urlopen(url: str, timeout: float) -> _Response:
        calls.append((url, timeout))
        return _Response(payload)

    monkeypatch.setattr(frey_face.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DataError, match="wrong md5"):  # the synthetic file is not the real one
        FreyFace(tmp_path / "dl", download=True)
    assert calls == [(frey_face.URL, frey_face.DOWNLOAD_TIMEOUT_S)]
    assert not list((tmp_path / "dl" / "FreyFace" / "raw").iterdir())  # nothing half-written

    monkeypatch.setattr(frey_face, "MD5", hashlib.md5(payload).hexdigest())
    ds = FreyFace(tmp_path / "dl", download=True)  # now the md5 matches: saved and read
    assert len(ds) == 30 and (tmp_path / "dl" / "FreyFace" / "raw" / "frey_rawface.mat").is_file()

    def offline(url: str, timeout: float) -> _Response:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(frey_face.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        FreyFace(tmp_path / "off", download=True)
    assert "download from" in str(err.value) and "\n" not in str(err.value)


def test_datamodule_serves_grey_faces(tmp_path: Path) -> None:
    write_frey_mat(tmp_path, n=80)
    assert "frey_face" in DATASETS
    dm = ImageDataModule("frey_face", str(tmp_path), False, batch_size=10, val_size=5,
                         binarize="none")  # fmt: skip
    dm.setup()
    assert dm.data_shape == (1, 28, 20)
    assert (len(dm.train_images), len(dm.val_images), len(dm.test_images)) == (35, 5, 40)
    assert dm.train_images.dtype == torch.float32
    assert float(dm.train_images.min()) >= 0 and float(dm.train_images.max()) <= 1
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (10, 1, 28, 20)


@pytest.mark.skipif(
    not (SHARED_DATA / "FreyFace" / "raw" / "frey_rawface.mat").is_file(),
    reason="real Frey Face not available",
)
def test_real_file_md5_and_split_sizes() -> None:
    train = FreyFace(SHARED_DATA, train=True, check_md5=True)
    test = FreyFace(SHARED_DATA, train=False, check_md5=True)
    assert (len(train), len(test)) == (1765, 200)
    assert train.data.shape[1:] == (1, 28, 20) and train.data.dtype == torch.uint8
