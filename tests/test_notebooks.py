"""The notebooks run top to bottom on tiny data (so they cannot rot)."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO


@pytest.mark.parametrize("backend", [None, "Agg"], ids=["default-backend", "MPLBACKEND=Agg"])
@pytest.mark.parametrize("name", ["explore_run.ipynb", "compare_sweep.ipynb"])
def test_notebook_executes(name, backend, data_root, monkeypatch) -> None:
    """Figures come out whatever MPLBACKEND says (clusters often set Agg, which ipykernel keeps)."""
    monkeypatch.setenv("AEVB_DATA_ROOT", str(data_root))
    monkeypatch.setenv("AEVB_IW_SAMPLES", "20")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var in ("AEVB_RUN_DIR", "AEVB_SWEEP_DIR", "MPLBACKEND"):
        monkeypatch.delenv(var, raising=False)
    if backend is not None:
        monkeypatch.setenv("MPLBACKEND", backend)
    path = REPO / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "store without outputs"
    )
    NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= (4 if name == "explore_run.ipynb" else 1)
    if name == "compare_sweep.ipynb":  # 2 latent sizes x 2 betas, each over 2 seeds
        text = "".join(
            o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
        )
        assert (
            "8 jobs, 8 completed, 4 configurations over ['model.latent_dim', 'model.beta']" in text
        )
        assert text.count("(n=2, jobs ") == 4
