"""aevb.step_groups: K optimisation steps per Lightning step take the very steps K = 1 takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aevb.data import EpochShuffle, TensorLoader
from aevb.step_groups import StepGroup

from .conftest import check_light_answer, run_cli, tiny_overrides

#: 500 training images in batches of 50: 10 batches per epoch, 3 groups of 3 and one of 1 with
#: K = 3; the budget of 27 steps ends inside a group
CURVE = [
    "+callbacks.learning_curve._target_=aevb.learning_curve.LearningCurve",
    "+callbacks.learning_curve.start=60",
    "+callbacks.learning_curve.points_per_decade=8",
    "+callbacks.learning_curve.num_train=200",
    "+callbacks.learning_curve.num_test=100",
    "budget_samples=1350",
    "trainer.max_epochs=null",
    "eval.iw_samples=10",
    "eval.iwae_ks=[1,5]",
]


def _loader(group: int, position: int | None = None) -> TensorLoader:
    images = torch.rand(10, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    return TensorLoader(
        images,
        torch.arange(10),
        3,
        EpochShuffle(10, shuffle=True, seed=4),
        binarize=True,
        position=(lambda: position) if position is not None else None,
        group=group,
    )


@pytest.mark.parametrize("position", [None, 5, 6])
def test_groups_hold_the_batches_of_single_steps_in_order(position: int | None) -> None:
    single = [b for b in _loader(1, position)]
    groups = list(_loader(3, position))
    assert all(isinstance(g, StepGroup) for g in groups)
    assert len(_loader(3)) == 2 and len(_loader(1)) == 4  # 4 batches: groups of 3 and 1
    flat = [b for g in groups for b in g]
    assert len(flat) == len(single) == (4 if position is None else 4 - position % 4)
    for a, b in zip(flat, single, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same rows, same noise


def _train(tmp_path: Path, data_root: Path, name: str, *extra: str) -> Path:
    run = tmp_path / name
    args = [*tiny_overrides(data_root), *CURVE, f"hydra.run.dir={run}", *extra]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def _numbers(run: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((run / "metrics.json").read_text())
    curve = json.loads((run / "learning_curve.json").read_text())["points"]
    keep = {
        k: v
        for k, v in metrics.items()
        if k.startswith(("test", "best_")) or k in ("global_step", "samples_seen", "epochs")
    }
    return keep, [{k: v for k, v in p.items() if k != "wall_time_s"} for p in curve]


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run as {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for file in run.rglob("events.out.tfevents*"):
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return {tag: sorted(points) for tag, points in out.items()}


#: per case, the overrides of both runs; losses and train/lr are logged every 4th batch, so
#: inside groups too
SAME_RUNS = {
    "aevb": [],
    "wake_sleep": ["model.algorithm=wake_sleep", "trainer.log_every_n_steps=4"],
    # 27 steps of 10 per epoch: stepped at epochs 1 and 2; t_max = 3 epochs (a budget run)
    "cosine_epoch": ["lr_schedule=cosine", "trainer.log_every_n_steps=4"],
    "exponential_step": ["lr_schedule=exponential", "lr_schedule.interval=step",
                         "lr_schedule.gamma=0.95", "trainer.log_every_n_steps=4"],
}  # fmt: skip


@pytest.mark.parametrize("case", list(SAME_RUNS))
def test_a_run_is_the_same_with_three_steps_per_call(
    tmp_path: Path, data_root: Path, case: str
) -> None:
    extra = SAME_RUNS[case]
    algorithm = "wake_sleep" if case == "wake_sleep" else "aevb"
    runs = [
        _train(tmp_path, data_root, "k1", *extra),
        _train(tmp_path, data_root, "k3", "steps_per_call=3", *extra),
    ]
    one, three = (_numbers(run) for run in runs)
    assert one[0]["global_step"] == 27 and one[0]["samples_seen"] == 1350
    assert len(one[1]) >= 4  # curve points fall inside groups too
    assert three == one  # every test metric and curve point, bit for bit
    logged = [_scalars(run) for run in runs]
    assert {"train/elbo", "val/elbo", "epoch"} <= set(logged[0])
    if algorithm == "wake_sleep":
        assert len(logged[0]["train/wake_loss"]) >= 6  # batches 0, 4, 8 of every epoch
        assert {"train/wake_loss", "train/sleep_loss"} <= set(logged[0])
    if "lr_schedule" in " ".join(extra):  # a different learning rate every epoch or step
        lrs = logged[0]["train/lr"]
        assert len({lr for _, lr in lrs}) >= 3 and [s for s, _ in lrs][:3] == [0, 4, 8], lrs
    if case == "cosine_epoch":  # t_max = the budget's 3 epochs: lr x 1, 3/4, 1/4
        by_epoch = {step // 10: lr for step, lr in logged[0]["train/lr"]}
        assert by_epoch[1] == pytest.approx(0.75 * by_epoch[0])
        assert by_epoch[2] == pytest.approx(0.25 * by_epoch[0])
    assert logged[1] == logged[0]  # TensorBoard too: same values at the same steps


def test_refusals_name_the_setting(tmp_path: Path, data_root: Path) -> None:
    cases = {
        "model.algorithm=mcem": "model.algorithm",
        "trainer.gradient_clip_val=1.0": "trainer.gradient_clip_val",
        "+trainer.val_check_interval=5": "trainer.val_check_interval",
    }
    base = [*tiny_overrides(data_root), "steps_per_call=2"]
    for override, key in cases.items():
        run = tmp_path / key
        proc = run_cli([*base, override, f"hydra.run.dir={run}"], cwd=tmp_path)
        assert proc.returncode == 2, (override, proc.stderr[-2000:])
        assert key in proc.stderr and "steps_per_call=2" in proc.stderr, proc.stderr[-2000:]
        assert not run.exists()  # refused before anything is written
    proc = run_cli([*base, "steps_per_call=0"], cwd=tmp_path)
    assert proc.returncode == 2 and "steps_per_call" in proc.stderr


def test_a_checkpoint_resumes_only_with_its_steps_per_call(tmp_path: Path, data_root: Path) -> None:
    run = _train(tmp_path, data_root, "k2", "steps_per_call=2")
    proc = run_cli(
        [
            *tiny_overrides(data_root),
            *CURVE,
            f"hydra.run.dir={tmp_path / 'again'}",
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "steps_per_call" in proc.stderr and "written with" in proc.stderr, proc.stderr[-2000:]


def test_ddp_is_refused_before_training(tmp_path: Path, data_root: Path) -> None:
    args = [*tiny_overrides(data_root), "trainer=ddp_cpu", "steps_per_call=2"]
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 'ddp'}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "steps_per_call" in proc.stderr and "DDP" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "ddp" / "checkpoints").exists()


def test_refusals_answer_before_torch_loads(tmp_path: Path) -> None:
    for args, key in (
        (["steps_per_call=2", "model.algorithm=mcem"], "model.algorithm"),
        (["steps_per_call=two"], "steps_per_call"),
    ):
        check_light_answer("aevb.train", "aevb-train", args, tmp_path, 2, key)


def test_direct_steps_only_where_lightning_would_add_nothing_but_dispatch() -> None:
    """A group's steps bypass manual_backward/LightningOptimizer.step only on one device in 32
    bits with no backward hooks, and then call the guard's on_before_optimizer_step."""
    import lightning as L

    from aevb.divergence import DivergenceGuard
    from aevb.step_groups import _direct_hooks

    class Watch(L.Callback):
        def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            pass

    def trainer(*callbacks: L.Callback, precision: str = "32-true") -> L.Trainer:
        return L.Trainer(
            callbacks=list(callbacks),
            accelerator="cpu",
            devices=1,
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    guard, module = DivergenceGuard(), L.LightningModule()
    hooks = _direct_hooks(trainer(guard), module)
    assert hooks is not None and [h.func for h in hooks] == [guard.on_before_optimizer_step]
    assert _direct_hooks(trainer(guard, Watch()), module) is None
    assert _direct_hooks(trainer(guard, precision="64-true"), module) is None

    class OwnBackward(L.LightningModule):
        def backward(self, loss: torch.Tensor, *args: object, **kwargs: object) -> None:
            loss.backward()

    assert _direct_hooks(trainer(guard), OwnBackward()) is None
