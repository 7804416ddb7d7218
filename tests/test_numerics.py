"""aevb.numerics: TF32 for training, IEEE float32 for evaluations, wide sums, no subnormals."""

from __future__ import annotations

import pytest
import torch

from aevb.numerics import configure_numerics, full_precision, wide_dtype


@pytest.fixture
def restored() -> object:
    """The process-wide settings these tests change, put back after each."""
    matmul, conv = torch.get_float32_matmul_precision(), torch.backends.cudnn.conv.fp32_precision
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.conv.fp32_precision = conv
    torch.set_flush_denormal(False)


def test_sums_over_a_test_set_are_float64_except_on_mps() -> None:
    assert wide_dtype("cpu") == torch.float64
    assert wide_dtype(torch.device("cuda", 0)) == torch.float64
    assert wide_dtype("mps") == torch.float32  # Apple MPS has no float64


def test_configure_numerics_allows_tf32_and_flushes_subnormals(restored: object) -> None:
    torch.set_float32_matmul_precision("highest")
    configure_numerics()
    assert torch.get_float32_matmul_precision() == "high"
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    assert torch.tensor([1e-40], dtype=torch.float32).item() == 0.0
    assert torch.tensor([1e-30], dtype=torch.float32).item() > 0.0  # normal floats untouched


def test_full_precision_is_ieee_inside_and_restores_after(restored: object) -> None:
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    with full_precision():
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    with pytest.raises(KeyError), full_precision():
        raise KeyError("inside")
    assert torch.get_float32_matmul_precision() == "high"  # restored on an exception too
