"""Same numbers on every device and rank count; devices, precision, SLURM resources, locks.

Parametrised over the devices this machine has (`cpu` always, `cuda` / `mps` when present), so
the same tests check a GPU where there is one. DDP runs (2 gloo ranks) are in test_ddp.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from filelock import FileLock
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import Tensor

from aevb import metrics
from aevb.config import ConfigError, budget_steps
from aevb.data import EpochShuffle, ImageDataModule, binarize_once
from aevb.devices import check_accelerator, check_precision, runtime_record, slurm_tasks
from aevb.divergence import ACCELERATOR_EVERY, Diverged, DivergenceGuard
from aevb.learning_curve import LearningCurve
from aevb.rng import KeyedNormal, forked_streams, get_state
from aevb.train import config_dir
from aevb.vae import VAE

from .conftest import REPO, run_cli, tiny_overrides

DEVICES = [
    "cpu",
    *(["cuda"] if torch.cuda.is_available() else []),
    *(["mps"] if torch.backends.mps.is_available() else []),
]
GPU = [d for d in DEVICES if d != "cpu"]


def _model(device: str = "cpu") -> VAE:
    torch.manual_seed(0)
    return VAE((1, 28, 28), latent_dim=3, hidden_dims=[16]).to(device).eval()


# ----- budget_samples over ranks ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "m", "w", "budget"),
    [(500, 50, 1, 1234), (500, 50, 2, 700), (500, 50, 2, 1000), (501, 64, 2, 999), (600, 7, 4, 5)],
)
def test_budget_steps_train_the_budget_over_all_ranks(n: int, m: int, w: int, budget: int) -> None:
    """Walk the real sharded epochs: the run stops at the first step with samples >= budget."""
    steps = budget_steps(budget, m, n, w)
    per_rank = len(EpochShuffle(n, shuffle=True, seed=0, rank=0, world_size=w))
    batches = [min(m, per_rank - i) * w for i in range(0, per_rank, m)]  # samples per step
    seen, taken = 0, 0
    while seen < budget:
        seen += batches[taken % len(batches)]
        taken += 1
    assert steps == taken, (steps, taken)
    if w == 1 or n // w % m == 0:
        assert budget_steps(budget, m, None, w) == -(-budget // (m * w))


# ----- fixed binarizations and importance samples: keyed on the CPU --------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_binarized_sets_are_the_same_on_every_device(data_root: Path, device: str) -> None:
    def setup(dev: str, binarize: str) -> ImageDataModule:
        dm = ImageDataModule(
            root=str(data_root), download=False, val_size=100, binarize=binarize, seed=3
        )
        dm.trainer = SimpleNamespace(
            strategy=SimpleNamespace(root_device=torch.device(dev)), global_rank=0, world_size=1
        )
        dm.setup()
        return dm

    for binarize in ("dynamic", "static"):
        ref, dm = setup("cpu", binarize), setup(device, binarize)
        assert dm.test_images.device.type == device
        for split in ("train", "val", "test"):
            a, b = getattr(ref, f"{split}_images"), getattr(dm, f"{split}_images").cpu()
            assert torch.equal(a, b), (binarize, split)
        assert set(ref.test_images.unique().tolist()) == {0.0, 1.0}
    grey = torch.rand(5, 1, 4, 4)
    assert torch.equal(binarize_once(grey.to(device), 1).cpu(), binarize_once(grey, 1))


@pytest.mark.parametrize("device", DEVICES)
def test_importance_weights_do_not_depend_on_device_batching_or_chunk(device: str) -> None:
    model, x = _model(), (torch.rand(6, 1, 28, 28) < 0.3).float()
    index = torch.tensor([10, 11, 12, 13, 14, 15])

    def log_w(model: VAE, x: Tensor, index: Tensor, chunk: int) -> Tensor:
        with torch.no_grad():
            noise = KeyedNormal(0, index, 3)
            return metrics.importance_log_weights(
                x, model.encode(x), model.decode, model.prior, 130, chunk, noise=noise
            ).cpu()

    ref = log_w(model, x, index, 4096)
    on_device = _model(device)
    shards = [
        log_w(on_device, x[r::2].to(device), index[r::2], chunk) for r, chunk in ((0, 7), (1, 300))
    ]
    assert torch.allclose(shards[0], ref[:, 0::2], atol=1e-3, rtol=0)
    assert torch.allclose(shards[1], ref[:, 1::2], atol=1e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_sample_and_log_likelihood_take_a_cpu_generator_on_any_device(device: str) -> None:
    ref, model = _model(), _model(device)
    x = (torch.rand(4, 1, 28, 28) < 0.3).float()
    a = ref.sample(5, generator=torch.Generator().manual_seed(1))
    b = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert b.device.type == device and torch.allclose(a, b.cpu(), atol=1e-5)
    la = ref.log_likelihood(x, 50, generator=torch.Generator().manual_seed(2))
    lb = model.log_likelihood(x.to(device), 50, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(la, lb.cpu().to(la.dtype), atol=1e-3)


# ----- training noise: evaluations run on forked streams ---------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_a_learning_curve_point_leaves_the_training_streams_unchanged(device: str) -> None:
    model = _model(device)
    x = (torch.rand(30, 1, 28, 28) < 0.3).float().to(device)
    model.samples_seen_host = 1000
    dm = SimpleNamespace(train_images=x, test_images=x[:10], binarize="none")
    trainer = SimpleNamespace(
        datamodule=dm, lightning_module=model, global_step=3, current_epoch=0,
        is_global_zero=False, loggers=[],
    )  # fmt: skip
    curve = LearningCurve(start=1, batch_size=7, seed=5)
    torch.manual_seed(123)
    dev = torch.device(device)
    before = (get_state(torch.device("cpu")), get_state(dev))
    first = curve.evaluate(trainer, model)
    after = (get_state(torch.device("cpu")), get_state(dev))
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    second = curve.evaluate(trainer, model)
    assert (first["train_elbo"], first["test_elbo"]) == (second["train_elbo"], second["test_elbo"])
    with forked_streams(5, dev):  # the points use the seeded streams
        assert torch.equal(get_state(dev), torch.Generator(device).manual_seed(5).get_state())


# ----- every rank takes the same stop decision ------------------------------------------------
class _Strategy:
    """reduce() as a 2-rank all-reduce whose other rank holds `other`."""

    def __init__(self, other: dict[str, torch.Tensor]) -> None:
        self.other, self.calls = other, 0

    def reduce(self, t: torch.Tensor, reduce_op: str = "sum") -> torch.Tensor:
        self.calls += 1
        key = "flags" if t.dtype == torch.int32 else "first"
        other = self.other[key].to(t.dtype)
        return t + other if reduce_op == "sum" else torch.maximum(t, -other)


def _guard_step(guard: DivergenceGuard, trainer: SimpleNamespace, module: object) -> None:
    guard.on_before_optimizer_step(trainer, module, None)


def test_divergence_on_one_rank_stops_every_rank() -> None:
    guard = DivergenceGuard(check_every_n_steps=1, check_grads=False)
    module = SimpleNamespace(last_terms={"recon": torch.ones(3), "kl": torch.ones(3)})
    guard.on_train_start(None, SimpleNamespace(parameters=lambda: []))
    # this rank is finite; the other rank saw a non-finite KL at step 7 (its "first" as sent
    # to the all-reduce: never-bad terms as the largest step)
    never = torch.iinfo(torch.long).max
    strategy = _Strategy({"flags": torch.tensor([0, 1]), "first": torch.tensor([never, 7])})
    trainer = SimpleNamespace(global_step=7, current_epoch=1, world_size=2, strategy=strategy)
    with pytest.raises(Diverged, match="step 7 .*kl is not finite"):
        _guard_step(guard, trainer, module)
    assert strategy.calls >= 1


def test_a_thinned_check_still_stops_before_the_next_checkpoint() -> None:
    guard = DivergenceGuard(check_every_n_steps=10, check_grads=False)
    guard.on_train_start(None, SimpleNamespace(parameters=lambda: []))
    strategy = _Strategy({"flags": torch.zeros(2), "first": torch.full((2,), -1)})
    trainer = SimpleNamespace(global_step=1, current_epoch=0, world_size=1, strategy=strategy)
    for step, recon in ((1, 1.0), (2, float("nan")), (3, 1.0)):
        trainer.global_step = step
        _guard_step(guard, trainer, SimpleNamespace(last_terms={"recon": torch.tensor([recon])}))
    with pytest.raises(Diverged, match="step 2 .*recon"):  # the first bad step, not the last
        guard.on_save_checkpoint(trainer, None, {})


@pytest.mark.parametrize("name", ["adam", "adagrad", "sgd"])
def test_a_fused_optimizer_skips_a_non_finite_update_on_the_device(name: str) -> None:
    """Checked every 10th step: the NaN gradient of step 2 is handed to the fused step as
    found_inf and skipped (weights and optimizer state untouched), the finite steps around it
    are applied, and the next check names step 2."""
    w = torch.nn.Parameter(torch.ones(3))
    optimizer = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}.get(
        name, torch.optim.SGD
    )([w], lr=0.1, fused=True)
    guard = DivergenceGuard(check_every_n_steps=10, check_grads=True)
    guard.on_train_start(None, SimpleNamespace(parameters=lambda: [w]))
    strategy = _Strategy({"flags": torch.zeros(2), "first": torch.full((2,), -1)})
    trainer = SimpleNamespace(global_step=1, current_epoch=0, world_size=1, strategy=strategy)
    module = SimpleNamespace(last_terms={"recon": torch.ones(2)})
    seen = []
    for step, g in ((1, 1.0), (2, float("nan")), (3, 1.0)):
        trainer.global_step, w.grad = step, torch.full((3,), g)
        before = (w.detach().clone(), {k: v.clone() for k, v in optimizer.state[w].items()})
        guard.on_before_optimizer_step(trainer, module, optimizer)
        optimizer.step()
        seen.append(not torch.equal(w.detach(), before[0]))
        if step == 2:  # skipped: the weights and the optimizer's state as before the step
            assert all(torch.equal(v, before[1][k]) for k, v in optimizer.state[w].items())
    assert seen == [True, False, True] and torch.isfinite(w).all()
    with pytest.raises(Diverged, match="step 2 .*gradient"):
        guard.check(trainer)


def test_the_guard_reads_its_flags_every_step_on_cpu_and_thins_on_an_accelerator() -> None:
    fused = SimpleNamespace(defaults={"fused": True})
    plain = SimpleNamespace(defaults={"fused": None})
    for device, optimizers, every in (
        ("cpu", [fused], 1),
        ("cuda", [fused], ACCELERATOR_EVERY),
        ("cuda", [plain], 1),
    ):
        guard = DivergenceGuard(check_every_n_steps=None)
        module = SimpleNamespace(parameters=lambda: [], device=torch.device(device))
        guard.on_train_start(SimpleNamespace(optimizers=optimizers), module)
        assert guard.every == every, (device, optimizers)
    explicit = DivergenceGuard(check_every_n_steps=7)
    explicit.on_train_start(SimpleNamespace(optimizers=[fused]), module)
    assert explicit.every == 7


def test_a_thinned_guard_stops_before_validating_or_checkpointing(data_root, tmp_path) -> None:
    """Weights poisoned at step 18 (epoch 1), checked every 7th step: the epoch-1 validation and
    checkpoint (step 20) come before the next check (21) and must not see the diverged run."""
    run_dir = tmp_path / "run"
    fault = ["+callbacks.fault._target_=tests.faults.PoisonWeights", "+callbacks.fault.at_step=18"]
    args = [*tiny_overrides(data_root), "trainer.max_epochs=3", *fault]
    args += ["callbacks.divergence.check_every_n_steps=7", f"hydra.run.dir={run_dir}"]
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = run_cli(args, tmp_path, env=env)
    assert proc.returncode == 3, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["diverged_step"]) == ("diverged", 18)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 10  # end of epoch 0: the last good state
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


# ----- config: precision, GPU requests, SLURM resources ---------------------------------------
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "64-true", 16])
def test_unsupported_precision_is_refused(precision: object) -> None:
    with pytest.raises(ConfigError, match="trainer.precision must be 32-true"):
        check_precision(precision)
    for ok in ("32-true", "32", 32, None):
        check_precision(ok)


def test_unsupported_precision_fails_in_one_line_before_any_run(data_root, tmp_path) -> None:
    proc = run_cli([*tiny_overrides(data_root), "+trainer.precision=16-mixed"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "trainer.precision must be 32-true" in proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.skipif(bool(GPU), reason="this machine has a GPU")
def test_asking_for_a_gpu_without_one_is_one_line(data_root, tmp_path) -> None:
    proc = run_cli([*tiny_overrides(data_root), "trainer=gpu", "trainer.max_epochs=1"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.accelerator must be cpu or auto" in lines[0], lines
    proc = run_cli([str(tmp_path), "accelerator=gpu"], tmp_path, script="aevb.evaluate")
    assert proc.returncode == 2
    assert proc.stderr.startswith("aevb-eval: error: accelerator must be cpu or auto")


@pytest.mark.skipif(bool(GPU), reason="this machine has a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_asked_for_without_one_is_a_config_error(accelerator: str) -> None:
    """The check behind the scenario above, in-process."""
    with pytest.raises(ConfigError, match="trainer.accelerator must be cpu or auto"):
        check_accelerator(accelerator)
    check_accelerator("cpu")
    check_accelerator("auto")


def _launcher(*overrides: str) -> dict:
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="train"):
        cfg = compose("train", ["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_resources_follow_the_trainer() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    ddp = _launcher("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2")
    assert (ddp["nodes"], ddp["tasks_per_node"], ddp["gpus_per_node"]) == (2, 4, 4)
    one = _launcher("trainer=default")
    assert (one["nodes"], one["tasks_per_node"], one["gpus_per_node"]) == (1, 1, 1)
    cpu = _launcher("trainer=ddp_cpu")
    assert (cpu["tasks_per_node"], cpu["gpus_per_node"]) == (2, None)
    assert _launcher("trainer=ddp", "trainer.devices=[0,1,2]")["tasks_per_node"] == 3
    with pytest.raises(ConfigError, match="trainer.devices"):
        slurm_tasks(-1)


def test_slurm_with_all_devices_is_refused_in_one_line(tmp_path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["-m", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=-1", "seed=1,2"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.devices must be a number of devices" in lines[0], lines
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()


# ----- downloads: one process at a time ---------------------------------------------------------
def test_loading_with_download_waits_for_the_lock(data_root: Path) -> None:
    dm = ImageDataModule(root=str(data_root), download=True, val_size=100)
    done = threading.Event()
    with FileLock(data_root / ".mnist.lock"):  # another rank / node / array job downloading
        worker = threading.Thread(target=lambda: (dm.prepare_data(), done.set()))
        worker.start()
        time.sleep(1.0)
        assert not done.is_set()  # waits instead of racing on the same files
    worker.join(timeout=60)
    assert done.is_set() and dm._raw is not None


# ----- what a run records ------------------------------------------------------------------------
def test_runtime_record_names_device_precision_ranks_and_torch() -> None:
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cpu")), precision="32-true", world_size=2
    )
    record = runtime_record(trainer)
    assert record["device"] == "cpu" and record["world_size"] == 2
    assert record["precision"] == "32-true" and record["torch"] == torch.__version__
