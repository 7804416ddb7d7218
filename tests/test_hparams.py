"""TensorBoard's HParams tab of a sweep: the swept keys and the test metrics are its columns --
in the event files, in TensorBoard's own backend, and in a browser (headless Chromium)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp

from aevb.hparams import METRICS, override_values, swept_domains

from .conftest import REPO, run_cli, tiny_overrides


def test_swept_keys_come_from_the_command_line_and_the_sweeper_params() -> None:
    swept = swept_domains(
        [
            "data.root=/d",  # not swept
            "model.latent_dim=2,8",
            "+seed=range(0,3)",
            "likelihood=bernoulli,gaussian",
            "model.hidden_dims=[32],[64]",
            "hydra.launcher.n_jobs=1,2",  # hydra's own keys are no columns
        ],
        {"optim.lr": "tag(log, interval(1e-4, 1e-2))", "model.latent_dim": "choice(2, 5)"},
    )
    keys = ["optim.lr", "model.latent_dim", "seed", "likelihood", "model.hidden_dims"]
    assert list(swept) == keys
    lr = swept["optim.lr"]
    assert isinstance(lr, hp.RealInterval) and (lr.min_value, lr.max_value) == (1e-4, 1e-2)
    assert swept["model.latent_dim"].values == [2.0, 8.0]  # the command line wins
    assert swept["seed"].values == [0.0, 1.0, 2.0]
    assert swept["likelihood"].values == ["bernoulli", "gaussian"]
    assert swept["model.hidden_dims"].values == ["[32]", "[64]"]
    assert swept_domains(["data.root=/d", "model.beta=1"]) == {}


def test_a_jobs_overrides_are_typed_hyperparameters() -> None:
    values = override_values(
        ["model.latent_dim=2", "+seed=1", "model.beta=0.5", "likelihood=gaussian", "x=[1,2]"]
        + ["trainer.enable_progress_bar=false", "ckpt_path=null", "hydra.job.num=3", "~y"]
    )
    assert values == {
        "model.latent_dim": 2,
        "seed": 1,
        "model.beta": 0.5,
        "likelihood": "gaussian",
        "x": "[1,2]",
        "trainer.enable_progress_bar": False,
        "ckpt_path": "null",
    }


@pytest.fixture(scope="module")
def sweep(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 jobs of a real multirun: model.latent_dim=2,3 (data.val_size and the rest fixed)."""
    cwd = tmp_path_factory.mktemp("hparams")
    tiny = [o for o in tiny_overrides(data_root) if not o.startswith("model.latent_dim=")]
    sweep = cwd / "sweep"
    args = ["-m", *tiny, "model.latent_dim=2,3", f"hydra.sweep.dir={sweep}"]
    proc = run_cli(args, cwd, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def _hparams_data(run_dir: Path) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    """The HParams summaries in `run_dir`'s own event files, by tag."""
    found = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        with contextlib.suppress(KeyError):  # no hparams data in this file
            for tag, content in acc.PluginTagToContent("hparams").items():
                found[tag] = plugin_data_pb2.HParamsPluginData.FromString(content)
    return found


def test_the_sweep_declares_the_swept_keys_and_the_jobs_fill_them(sweep: Path) -> None:
    root = _hparams_data(sweep)
    assert set(root) == {"_hparams_/experiment"}  # declared once, by the sweep's callback
    experiment = root["_hparams_/experiment"].experiment
    assert [h.name for h in experiment.hparam_infos] == ["model.latent_dim"]
    assert list(experiment.hparam_infos[0].domain_discrete.values) != []
    assert [m.name.tag for m in experiment.metric_infos] == list(METRICS)
    for job, latent_dim in (("0", 2), ("1", 3)):
        data = _hparams_data(sweep / job)
        assert "_hparams_/experiment" not in data  # a job does not redeclare the columns
        start = data["_hparams_/session_start_info"].session_start_info
        assert start.hparams["model.latent_dim"].number_value == latent_dim
        assert start.hparams["latent_dim"].number_value == latent_dim  # Settings.hparams()
        assert start.hparams["data.val_size"].number_value == 100  # a fixed override
        end = data["_hparams_/session_end_info"].session_end_info
        assert end.status == api_pb2.STATUS_SUCCESS


def test_tensorboard_serves_the_swept_keys_as_the_columns(sweep: Path) -> None:
    """What the dashboard asks TensorBoard for: the experiment and one row per job."""
    port = _free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/hparams"
        ask = {"experimentName": ""}
        experiment = _poll(lambda: (e := _answer(f"{url}/experiment", ask))["hparamInfos"] and e)
        assert [h["name"] for h in experiment["hparamInfos"]] == ["model.latent_dim"]
        assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(METRICS)
        query = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE"],
            "colParams": [{"hparam": "model.latent_dim"}],
            "aggregationType": "AGGREGATION_AVG",
            "startIndex": 0,
            "sliceSize": 10,
        }
        groups = _poll(lambda: _answer(f"{url}/session_groups", query).get("sessionGroups"))
        rows = sorted((g["hparams"]["model.latent_dim"], g["sessions"][0]["name"]) for g in groups)
        assert rows == [(2, "0"), (3, "1")]
        for g in groups:
            job = json.loads((sweep / g["sessions"][0]["name"] / "metrics.json").read_text())
            values = {v["name"]["tag"]: v["value"] for v in g["metricValues"]}
            assert values["test/elbo"] == pytest.approx(job["test/elbo"], rel=1e-6)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
)
def test_a_browser_shows_the_swept_keys_and_test_metrics(sweep: Path, tmp_path: Path) -> None:
    expected = ["model.latent_dim", *METRICS]
    script = REPO / "scripts" / "tensorboard_hparams.py"
    png = tmp_path / "hparams.png"
    proc = subprocess.run(
        [sys.executable, str(script), str(sweep), "--screenshot", str(png), "--expect", *expected],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == expected
    assert png.read_bytes().startswith(b"\x89PNG")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answer(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _poll(probe, timeout: float = 60):
    """`probe()`'s first truthy answer (TensorBoard loads the event files in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if result := probe():
                return result
        if time.monotonic() > deadline:
            raise TimeoutError("tensorboard did not answer")
        time.sleep(0.5)


def test_declaring_the_columns_does_not_import_torch(tmp_path: Path) -> None:
    """The sweep's launching process writes the declaration with tensorboard's own writer: it
    never pays torch's import (seconds) before its first job starts."""
    code = (
        "import sys\n"
        "from omegaconf import OmegaConf\n"
        "from aevb.hparams import write_sweep_experiment\n"
        "cfg = OmegaConf.create({'hydra': {'overrides': {'task': ['model.latent_dim=2,3']}}})\n"
        "swept = write_sweep_experiment(sys.argv[1], cfg)\n"
        "print(sorted(swept), 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["['model.latent_dim']", "False"]
    root = _hparams_data(tmp_path)
    names = [h.name for h in root["_hparams_/experiment"].experiment.hparam_infos]
    assert names == ["model.latent_dim"]
