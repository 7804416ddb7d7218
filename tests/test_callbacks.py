"""TensorBoard images and HParams of a short real run, read back with tensorboard's reader."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.distributions import Normal

from aevb.callbacks import LatentManifold, PriorSamples
from aevb.vae import VAE

from .conftest import run_cli, tiny_overrides

IMAGE_TAGS = ("reconstructions", "samples", "latent_manifold", "latent_scatter")


@pytest.fixture(scope="module")
def image_run(data_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    cwd = tmp_path_factory.mktemp("cb")
    run_dir = cwd / "run"
    every = [f"callbacks.{t}.every_n_epochs=1" for t in IMAGE_TAGS]
    proc = run_cli(
        [*tiny_overrides(data_root), "trainer.max_epochs=2", *every, f"hydra.run.dir={run_dir}"],
        cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def _accumulators(run_dir: Path) -> list[EventAccumulator]:
    accs = []
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        accs.append(acc)
    return accs


def test_event_files_hold_image_grids_of_the_expected_shape(image_run) -> None:
    run_dir, _ = image_run
    images = {
        t: e for a in _accumulators(run_dir) for t in a.Tags()["images"] for e in [a.Images(t)]
    }
    assert set(images) == {f"images/{t}" for t in IMAGE_TAGS}
    recon = images["images/reconstructions"]
    assert [e.step for e in recon] == [10, 20]  # every epoch (10 steps each)
    pad, cell = 2, 28 + 2
    assert (recon[-1].width, recon[-1].height) == (8 * cell + pad, 2 * cell + pad)  # 8 pairs
    samples = images["images/samples"][-1]
    assert (samples.width, samples.height) == (8 * cell + pad, 8 * cell + pad)  # 64 samples
    traversal = images["images/latent_manifold"][-1]  # latent_dim=4 < num_dims=8: 4 rows
    assert (traversal.width, traversal.height) == (15 * cell + pad, 4 * cell + pad)
    scatter = images["images/latent_scatter"][-1]
    assert (scatter.width, scatter.height) == (400, 400)


def test_hparams_plugin_holds_run_hyperparameters_and_final_metrics(image_run) -> None:
    run_dir, _ = image_run
    content: dict[str, bytes] = {}
    scalars: dict[str, float] = {}
    for acc in _accumulators(run_dir):
        with contextlib.suppress(KeyError):  # KeyError: no hparams data in this file
            content.update(acc.PluginTagToContent("hparams"))
        scalars.update({t: acc.Scalars(t)[-1].value for t in acc.Tags()["scalars"]})
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"test/elbo", "test/nll", "test/active_units"} <= metric_tags
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["latent_dim"].number_value == 4 and hparams["likelihood"].string_value
    assert {"lr", "beta", "data", "binarize", "hidden_dims"} <= set(hparams)
    assert scalars["test/nll"] > 0 and scalars["test/nll"] <= -scalars["test/elbo"] + 1.0
    assert 0 <= scalars["test/active_units"] <= 4


def test_manifold_for_two_latent_dims_uses_the_gaussian_icdf_grid() -> None:
    model = VAE(data_shape=(1, 28, 28), latent_dim=2, hidden_dims=[8]).eval()
    cb = LatentManifold(steps=5)
    z = cb.latent_codes(model, datamodule=None)
    values = Normal(0.0, 1.0).icdf(torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]))
    grid = z.view(5, 5, 2)
    torch.testing.assert_close(grid[0, :, 0], values)  # columns: z_1 increasing
    torch.testing.assert_close(grid[:, 0, 1], values.flip(0))  # rows: z_2 decreasing
    image = cb.image(model, datamodule=None)
    assert image.shape == (3, 5 * 30 + 2, 5 * 30 + 2) and 0 <= image.min() <= image.max() <= 1


def test_prior_samples_are_the_same_frame_to_frame() -> None:
    model = VAE(data_shape=(1, 28, 28), latent_dim=3, hidden_dims=[8]).eval()
    cb = PriorSamples(num_samples=4, seed=3)
    torch.testing.assert_close(cb.image(model, None), cb.image(model, None))
    assert cb.image(model, None).shape == (3, 2 * 30 + 2, 2 * 30 + 2)
