"""Shared fixtures: tiny datasets in torchvision's raw layout and a CLI runner.

Nothing here touches ../shared or the network.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

#: Scenario tests, marked `scenario` here (one list; some of their files are edited often):
#: whole runs through subprocesses (signals, kills and resumes, sweeps and launchers, DDP,
#: recipes, notebooks, benchmarks), tens of seconds to minutes each on 2 cores. `pytest` leaves
#: them out (`-m "not scenario"` in pyproject.toml's addopts), `pytest -m scenario` runs only
#: them, CI (.ci/run) runs both. Every module keeps fast tests in the default run. A key is a
#: file, `file::test` (every parametrization) or a full node id.
SCENARIOS: frozenset[str] = frozenset(
    {
        "tests/test_benchmarks.py",
        "tests/test_notebooks.py",
        # the campaign script (27 recorded launches, twice) and a measurement script
        "tests/test_reproduce_paper.py",
        "tests/test_bound_spread.py",
        # test_checkpoints: one run each (fast: crash mid-write, old-release resume, restore)
        "tests/test_checkpoints.py::test_last_ckpt_is_rewritten_every_epoch_and_at_the_end_of_training",
        "tests/test_checkpoints.py::test_a_disk_that_fills_up_ends_in_one_line_and_keeps_loadable_checkpoints",
        "tests/test_checkpoints.py::test_a_full_tmpdir_does_not_matter",
        "tests/test_checkpoints.py::test_a_checkpoint_that_would_run_code_is_refused_in_one_line",
        "tests/test_checkpoints.py::test_aevb_eval_of_a_corrupt_checkpoint_is_one_line",
        "tests/test_checkpoints.py::test_load_run_refuses_a_checkpoint_of_another_config",
        # test_ddp: two gloo processes per run (fast: the shards)
        "tests/test_ddp.py::test_two_gloo_processes_and_only_rank_zero_writes",
        "tests/test_ddp.py::test_samples_seen_counts_both_ranks_each_on_its_own_shard",
        "tests/test_ddp.py::test_logged_test_metrics_equal_a_single_process_evaluation",
        "tests/test_ddp.py::test_ddp_started_by_lightning_is_refused_inside_a_local_multirun",
        "tests/test_ddp.py::test_metrics_record_device_precision_ranks_and_torch",
        "tests/test_ddp.py::test_ranks_draw_different_training_noise_and_each_state_is_saved",
        "tests/test_ddp.py::test_sharded_test_nll_equals_a_single_process_evaluation",
        "tests/test_ddp.py::test_budget_samples_counts_every_rank",
        "tests/test_ddp.py::test_a_resumed_ddp_run_continues_bit_exactly",
        # test_devices: a run, and the console scripts' refusals (fast: the same checks)
        "tests/test_devices.py::test_a_thinned_guard_stops_before_validating_or_checkpointing",
        "tests/test_devices.py::test_unsupported_precision_fails_in_one_line_before_any_run",
        "tests/test_devices.py::test_asking_for_a_gpu_without_one_is_one_line",
        "tests/test_devices.py::test_slurm_with_all_devices_is_refused_in_one_line",
        "tests/test_experiments.py::test_cfg_job_prints_the_recipe",
        # test_step_groups: subprocess runs refused late (fast: K=1 vs K=3, light refusals)
        "tests/test_step_groups.py::test_ddp_is_refused_before_training",
        "tests/test_step_groups.py::test_a_checkpoint_resumes_only_with_its_steps_per_call",
        "tests/test_step_groups.py::test_refusals_name_the_setting",
        "tests/test_experiments.py::test_frey_recipe_runs_to_its_budget_with_a_log_spaced_curve",
        "tests/test_experiments.py::test_fig3_recipe_runs_each_algorithm_with_a_marginal_curve",
        "tests/test_figures.py::test_cli_writes_paper_figures_with_expected_panels",
        "tests/test_figures.py::test_curves_come_from_learning_curve_json",
        # a long numerical check (fast: the linear-Gaussian case)
        "tests/test_hmc.py::test_appendix_d_estimator_against_quadrature_and_importance_sampling",
        "tests/test_hparams.py::test_the_sweep_declares_the_swept_keys_and_the_jobs_fill_them",
        "tests/test_hparams.py::test_tensorboard_serves_the_swept_keys_as_the_columns",
        "tests/test_hparams.py::test_a_browser_shows_the_swept_keys_and_test_metrics",
        "tests/test_lr_schedules.py::test_resumed_scheduled_run_matches_the_uninterrupted_run",
        "tests/test_objectives.py::test_multirun_over_likelihoods_and_betas_records_each_jobs_settings",
        "tests/test_reference_recipes.py::test_recipe_runs_a_few_steps",
        "tests/test_reliability.py::test_console_script_exit_code_and_traceback_on_request[full_error]",
        "tests/test_reliability.py::test_resume_after_sigkill_matches_the_uninterrupted_run",
        "tests/test_resume.py::test_budget_run_resumed_from_an_epoch_end_checkpoint_matches_the_uninterrupted_run",
        "tests/test_resume.py::test_run_stopped_by_sigterm_mid_epoch_resumes_to_the_uninterrupted_result",
        "tests/test_resume.py::test_run_stopped_by_sigterm_on_an_epochs_last_batch_resumes_to_the_same_result",
        # test_rundir: a finished run, concurrent launches, a re-run sweep (fast: names, paths)
        "tests/test_rundir.py::test_launches_in_the_same_second_get_their_own_dirs",
        "tests/test_rundir.py::test_a_dir_locked_by_another_process_is_refused_and_left_alone",
        "tests/test_rundir.py::test_a_refused_attempt_modifies_nothing_of_the_existing_run",
        "tests/test_rundir.py::test_a_checkpoint_of_other_data_is_refused_before_anything_is_created",
        "tests/test_rundir.py::test_resume_auto_continues_the_same_run",
        "tests/test_rundir.py::test_a_rerun_sweep_matches_jobs_by_overrides_not_numbers",
        "tests/test_signals.py::test_a_signal_at_a_random_point_stops_in_seconds_and_resumes",
        "tests/test_signals.py::test_a_sweep_stopped_by_sigterm_exits_143_and_its_summary_says_interrupted",
        "tests/test_signals.py::test_a_joblib_sweep_stopped_by_sigterm_stops_every_job_resumably",
        "tests/test_signals.py::test_aevb_eval_stops_within_a_batch",
        "tests/test_step_size.py::test_cli_probes_selects_and_writes_table_and_recipe_file",
        # test_sweeps: one multirun per launcher (fast: pickling, resume rules, sbatch flags)
        "tests/test_sweeps.py::test_basic_launcher_grid",
        "tests/test_sweeps.py::test_joblib_launcher_grid",
        "tests/test_sweeps.py::test_submitit_local_launcher_grid",
        "tests/test_sweeps.py::test_failed_point_does_not_stop_the_sweep",
        "tests/test_sweeps.py::test_requeued_job_resumes_from_last_checkpoint",
        "tests/test_sweeps.py::test_optuna_search_maximises_the_returned_val_elbo",
        # test_train_cli: in-process in test_reliability's BAD_INPUTS
        "tests/test_train_cli.py::test_bad_value_exits_nonzero_naming_the_key",
        "tests/test_train_cli.py::test_wheel_ships_the_configs",
    }
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the SCENARIOS; a key naming a test its file does not define is a usage error."""
    checked: set[str] = set()
    for item in items:
        file, _, name = item.nodeid.partition("::")
        keys = (file, f"{file}::{name.split('[')[0]}", item.nodeid)
        if any(key in SCENARIOS for key in keys):
            item.add_marker(pytest.mark.scenario)
        if file not in checked and isinstance(item, pytest.Function):
            checked.add(file)
            missing = [
                key
                for key in SCENARIOS
                if key.startswith(f"{file}::")
                and not hasattr(item.module, key.split("::")[1].split("[")[0])
            ]
            if missing:
                raise pytest.UsageError(f"tests/conftest.py SCENARIOS: no such test: {missing}")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format MNIST uses (magic 0x08 = ubyte, then dims)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images: a class-dependent bar pattern plus noise, labels 0..9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.int32)
    for i, c in enumerate(labels):
        images[i, 4 + 2 * c : 7 + 2 * c, 4:24] += 200
        images[i, 4:24, 4 + 2 * c : 6 + 2 * c] += 150
    return np.clip(images, 0, 255).astype(np.uint8), labels


def two_bars(n: int, seed: int = 0) -> torch.Tensor:
    """n binary 1x4x4 images: two prototypes (bars), each pixel flipped with probability 0.05."""
    import torch

    g = torch.Generator().manual_seed(seed)
    protos = torch.zeros(2, 1, 4, 4)
    protos[0, 0, :, :2] = 1
    protos[1, 0, :2, :] = 1
    x = protos[torch.randint(0, 2, (n,), generator=g)]
    flip = torch.rand(x.shape, generator=g) < 0.05
    return torch.where(flip, 1 - x, x)


def make_mnist_like(root: Path, folder: str, n_train: int = 600, n_test: int = 200) -> Path:
    """Write `root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`."""
    raw = root / folder / "raw"
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread() -> None:
    """In-process runs train tiny models, for which torch's default of one intra-op thread per
    core only adds synchronisation: with the cores busy (a background training campaign) two
    threads waiting on each other made a 400-step wake-sleep test 13x slower (119 s vs 9 s).
    Subprocess runs get OMP_NUM_THREADS=1 from `run_cli`; tests of aevb.threads set and restore
    their own counts."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding tiny MNIST and FashionMNIST (600 train / 200 test images)."""
    root = tmp_path_factory.mktemp("data")
    make_mnist_like(root, "MNIST")
    make_mnist_like(root, "FashionMNIST")
    return root


def tiny_overrides(data_root: Path) -> list[str]:
    """Overrides for a seconds-long CPU run on the tiny data."""
    return [
        f"data.root={data_root}",
        "data.download=false",
        "data.val_size=100",
        "data.batch_size=50",
        "data.eval_batch_size=100",
        "model.hidden_dims=[32]",
        "model.latent_dim=4",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]


def run_cli(
    args: list[str],
    cwd: Path,
    script: str = "aevb-train",
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a console script (through `python -m` so the current interpreter is used)."""
    module = {"aevb-train": "aevb.train"}.get(script, script)
    inherited = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    extra = dict(env or {})
    if "PYTHONPATH" in extra and inherited.get("PYTHONPATH"):  # keep a worktree's src/ first
        extra["PYTHONPATH"] = inherited["PYTHONPATH"] + os.pathsep + extra["PYTHONPATH"]
    full_env = {**inherited, "OMP_NUM_THREADS": "1", **extra}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: modules a command line must answer without (what made `--help` take seconds)
HEAVY_MODULES = ("torch", "lightning", "torchvision", "matplotlib")
_LIGHT_PROBE = """
import importlib, json, sys
module = importlib.import_module(sys.argv[1])
sys.argv = sys.argv[1:]
try:
    module.main()
    code = 0
except SystemExit as stop:
    code = stop.code or 0
print("\\nPROBE " + json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def run_main_probe(module: str, args: list[str], cwd: Path) -> tuple[int, list[str], str, str]:
    """Run `module.main()` on `args` in a fresh interpreter: (exit status, the HEAVY_MODULES it
    imported, stdout, stderr without the probe's own line)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "-c", _LIGHT_PROBE, module, *args],
        cwd=cwd,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    stderr, _, probe = proc.stderr.rpartition("\nPROBE ")
    assert probe, proc.stderr[-2000:]  # the probe's line is missing: main() crashed
    result = json.loads(probe)
    heavy = [m for m in HEAVY_MODULES if m in result["modules"]]
    return result["code"], heavy, proc.stdout, stderr.strip()


def check_light_answer(
    module: str, script: str, args: list[str], cwd: Path, code: int, needle: str
) -> None:
    """`module.main()` answers `args` without HEAVY_MODULES, exits `code` with `needle` in its
    output; a refusal (2) is one line (after argparse's usage); nothing under cwd is written."""
    before = sorted(cwd.rglob("*"))
    status, heavy, out, err = run_main_probe(module, args, cwd)
    assert (status, heavy) == (code, []), err[-2000:]
    assert needle in (out if code == 0 else err), out + err
    if code == 2:
        lines = err.splitlines()
        assert lines[-1].startswith(f"{script}: error: ")
        assert len(lines) == 1 or err.startswith(f"usage: {script} "), err
    assert sorted(cwd.rglob("*")) == before


def interrupt_resume_compare(
    tmp_path: Path,
    common: list[str],
    interrupt: list[str],
    returncode: int,
    last_step: int,
    keys: tuple[str, ...] = ("best_val/elbo", "test/elbo", "samples_seen", "global_step"),
) -> tuple[dict, dict]:
    """Run `common` uninterrupted and with the fault `interrupt` (ending with `returncode`,
    last.ckpt at `last_step`), resume the latter from its last.ckpt, and require the same
    metrics `keys` and bit-identical final weights. Returns both final last.ckpt contents
    (uninterrupted, resumed) for further checks."""
    import torch

    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}  # tests.faults
    full = run_cli([*common, f"hydra.run.dir={tmp_path}/full"], tmp_path, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    cut = run_cli([*common, *interrupt, f"hydra.run.dir={tmp_path}/cut"], tmp_path, env=env)
    assert cut.returncode == returncode, cut.stderr[-2000:]
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == last_step
    resumed = run_cli(
        [*common, f"ckpt_path={last}", f"hydra.run.dir={tmp_path}/cut"], tmp_path, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    for key in keys:
        assert b[key] == a[key], key
    ca = torch.load(tmp_path / "full/checkpoints/last.ckpt", weights_only=True)
    cb = torch.load(last, weights_only=True)
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    return ca, cb
