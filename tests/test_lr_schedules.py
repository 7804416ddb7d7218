"""Learning-rate schedules: the lr each produces over epochs/steps, the config checks, logging
as train/lr, and an interrupted-and-resumed scheduled run equal to an uninterrupted one."""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aevb import lr_schedules, train
from aevb.config import Settings
from aevb.lr_schedules import LR_SCHEDULES, lightning_scheduler
from aevb.preflight import check_command_line
from aevb.vae import VAE

from .conftest import interrupt_resume_compare, tiny_overrides


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(scheduler, optimizer, n: int, metrics: list[float] | None = None) -> list[float]:
    """The lr in force during t = 0 .. n-1, stepping the scheduler after each t."""
    out = []
    for t in range(n):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step(*([metrics[t]] if metrics else []))
    return out


def _trainer(steps: int = 8, batches: int = 4) -> SimpleNamespace:
    return SimpleNamespace(
        estimated_stepping_batches=steps,
        num_training_batches=batches,
        accumulate_grad_batches=1,
    )


def test_multistep_and_exponential() -> None:
    opt = _optimizer()
    seq = _lrs(LR_SCHEDULES["multistep"](opt, milestones=[2, 4], gamma=0.5), opt, 6)
    assert seq == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    opt = _optimizer()
    assert _lrs(LR_SCHEDULES["exponential"](opt, gamma=0.5), opt, 4) == [1.0, 0.5, 0.25, 0.125]


def test_cosine_over_t_max_and_over_the_whole_run() -> None:
    opt = _optimizer()
    seq = _lrs(LR_SCHEDULES["cosine"](opt, t_max=4, eta_min=0.1), opt, 5)
    assert seq == pytest.approx([1.0, 0.8681980515339464, 0.55, 0.23180194846605365, 0.1])
    # t_max = null: the run's length in the interval (8 steps = 2 epochs of 4 batches)
    for interval, t_max in (("step", 8), ("epoch", 2)):
        spec = {"name": "cosine", "interval": interval, "t_max": None, "eta_min": 0.0}
        config = lightning_scheduler(_optimizer(), spec, _trainer())
        assert config["scheduler"].T_max == t_max and config["interval"] == interval
        assert config["name"] == "train/lr"


def test_catch_up_steps_each_scheduler_to_its_counter_quietly() -> None:
    """steps_per_call > 1 (manual optimisation): before an optimisation step, an epoch scheduler
    has been stepped once per completed epoch and a step scheduler once per step, as Lightning
    does with K = 1; plateau is left to validation; a resumed run (whose optimiser stepped in
    the process that saved it) gets no 'scheduler before optimizer' warning."""
    opt = _optimizer()
    epochs = LR_SCHEDULES["multistep"](opt, milestones=[1, 2], gamma=0.5)
    opt2 = _optimizer()
    steps = LR_SCHEDULES["exponential"](opt2, gamma=0.5)
    opt3 = _optimizer()
    plateau = LR_SCHEDULES["plateau"](opt3, factor=0.5, patience=0)
    configs = [SimpleNamespace(scheduler=sch, interval=interval) for sch, interval in
               ((epochs, "epoch"), (steps, "step"), (plateau, "epoch"))]  # fmt: skip
    trainer = SimpleNamespace(lr_scheduler_configs=configs, current_epoch=2, global_step=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr_schedules.catch_up(trainer)
        lr_schedules.catch_up(trainer)  # idempotent
    assert epochs.last_epoch == 2 and opt.param_groups[0]["lr"] == 0.25
    assert steps.last_epoch == 3 and opt2.param_groups[0]["lr"] == 0.125
    assert opt3.param_groups[0]["lr"] == 1.0


def test_iwae_schedule_is_burda_et_al() -> None:
    """1e-3 * 10^(-i/7) for 3^i epochs: epoch 0 at stage 0, epochs 1-3 at stage 1, 4-12 at 2."""
    opt = _optimizer(1e-3)
    seq = _lrs(LR_SCHEDULES["iwae"](opt, stages=3), opt, 14)
    s1, s2 = 0.0007196856730011521, 0.0005179474679231212
    assert seq == pytest.approx([1e-3, s1, s1, s1, *[s2] * 9, s2], rel=1e-12)
    assert lr_schedules.iwae_milestones(8) == [1, 4, 13, 40, 121, 364, 1093]
    assert lr_schedules.iwae_epochs(8) == 3280 and lr_schedules.iwae_epochs(3) == 13
    opt = _optimizer(1e-3)
    last = _lrs(LR_SCHEDULES["iwae"](opt, stages=8), opt, 3280)[-1]
    assert last == pytest.approx(1e-3 * 10 ** (-7 / 7), rel=1e-12)  # i = 7 in the last stage


def test_plateau_reduces_after_patience_validations_without_improvement() -> None:
    opt = _optimizer()
    sched = LR_SCHEDULES["plateau"](opt, factor=0.5, patience=1, threshold=0.5)
    # improvement = val/elbo > best + 0.5 nats; -98.6 is not one after -99
    elbo = [-100.0, -99.0, -98.6, -98.9, -90.0, -90.0, -89.8, -89.7]
    assert _lrs(sched, opt, 8, elbo) == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    config = lightning_scheduler(opt, {"name": "plateau", "interval": "epoch"}, _trainer())
    assert config["monitor"] == "val/elbo" and config["scheduler"].mode == "max"
    # stepped by the module after each validation (step_plateau), never by Lightning
    model = VAE(latent_dim=2, hidden_dims=(8,))
    model.lr_scheduler_step(config["scheduler"], -1.0)
    assert config["scheduler"].state_dict()["last_epoch"] == 0
    lr_schedules.step_plateau([SimpleNamespace(scheduler=config["scheduler"])], -1.0)
    assert config["scheduler"].state_dict()["last_epoch"] == 1


def test_none_keeps_the_bare_optimizer() -> None:
    """lr_schedule=none returns what configure_optimizers returned before schedules existed."""
    assert lightning_scheduler(_optimizer(), {"name": "none"}, _trainer()) is None
    for spec in (None, {"name": "none"}):
        model = VAE(latent_dim=2, hidden_dims=(8,), lr_schedule=spec)
        assert type(model.configure_optimizers()) is torch.optim.Adam


def _settings(*overrides: str) -> Settings:
    with initialize_config_dir(config_dir=train.config_dir(), version_base="1.3"):
        return Settings.from_cfg(compose("train", list(overrides)))


@pytest.mark.parametrize("name", sorted(LR_SCHEDULES))
def test_every_schedule_config_composes_and_builds(name: str) -> None:
    settings = _settings(f"lr_schedule={name}")
    assert settings.hparams()["lr_schedule"] == name
    spec = settings.model_kwargs((1, 28, 28))["lr_schedule"]
    if name == "none":
        assert spec is None
        return
    config = lightning_scheduler(_optimizer(), spec, _trainer())
    assert config["interval"] == "epoch" and config["name"] == "train/lr"
    state = config["scheduler"].state_dict()  # what Lightning writes into checkpoints
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == state  # safe checkpoint loading


def test_every_registered_schedule_has_a_config_file_and_back() -> None:
    files = {p.stem for p in (Path(train.config_dir()) / "lr_schedule").glob("*.yaml")}
    assert files == set(LR_SCHEDULES)


def test_old_run_configs_without_the_group_mean_none() -> None:
    with initialize_config_dir(config_dir=train.config_dir(), version_base="1.3"):
        cfg = compose("train")
    with open_dict(cfg):
        del cfg["lr_schedule"]
    assert Settings.from_cfg(cfg).lr_schedule.kwargs() is None


BAD = [
    (["lr_schedule=nosuch"], "lr_schedule=nosuch"),
    (["lr_schedule=multistep", "lr_schedule.gamma=2"], "lr_schedule.gamma must be a number in"),
    (["lr_schedule=multistep", "lr_schedule.milestones=[5,3]"], "lr_schedule.milestones must be"),
    (["lr_schedule=cosine", "+lr_schedule.gamma=0.5"], "lr_schedule.gamma must be one of the keys"),
    (["lr_schedule=iwae", "lr_schedule.interval=step"], "lr_schedule.interval must be one of"),
    (["lr_schedule=iwae", "lr_schedule.stages=0"], "lr_schedule.stages must be an integer >= 1"),
    (["lr_schedule=plateau", "lr_schedule.factor=1"], "lr_schedule.factor must be a number"),
    (["lr_schedule=exponential", "~lr_schedule.gamma"], "lr_schedule.gamma must be set"),
]


@pytest.mark.parametrize(("overrides", "needle"), BAD, ids=[b[1].split()[0] for b in BAD])
def test_bad_schedule_is_refused_in_one_line(overrides, needle) -> None:
    problem = check_command_line(overrides, train.config_dir(), "train", validate=train._validate)
    assert problem is not None and "\n" not in problem and needle in problem, problem


def test_bad_schedule_exits_2_before_hydra_runs(tmp_path, monkeypatch, capsys) -> None:
    argv = [
        "aevb-train",
        "lr_schedule=multistep",
        "lr_schedule.gamma=0",
        f"hydra.run.dir={tmp_path}/r",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        train.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "aevb-train: error: lr_schedule.gamma must be a number in (0, 1], got 0"
    assert not (tmp_path / "r").exists()


def test_schedules_sweep_like_any_group() -> None:
    ok = ["-m", "lr_schedule=none,cosine,iwae"]
    assert check_command_line(ok, train.config_dir(), "train", validate=train._validate) is None
    bad = ["-m", "lr_schedule=none,cosin"]
    problem = check_command_line(bad, train.config_dir(), "train", validate=train._validate)
    assert problem is not None and "cosin" in problem


# ----- through the console script: logged as train/lr, resumed exactly ---------------------
RESUMED = {
    # 10 steps per epoch; milestone after epoch 1 (the epoch the kill interrupts)
    "multistep": ["lr_schedule=multistep", "lr_schedule.milestones=[1,2]", "lr_schedule.gamma=0.5"],
    # val/elbo never improves by 10^4 nats after the first validation: halves after epoch 1
    "plateau": [
        "lr_schedule=plateau",
        "lr_schedule.patience=0",
        "lr_schedule.threshold=10000",
        "lr_schedule.factor=0.5",
    ],  # fmt: skip
    "cosine_step": ["lr_schedule=cosine", "lr_schedule.interval=step"],  # t_max = 30 steps
    # the same with steps_per_call=3 (aevb.step_groups): groups of batches 0-2, 3-5, 6-8, 9
    "multistep_k3": ["lr_schedule=multistep", "lr_schedule.milestones=[1,2]",
                     "lr_schedule.gamma=0.5", "steps_per_call=3"],
    "cosine_step_k3": ["lr_schedule=cosine", "lr_schedule.interval=step", "steps_per_call=3"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(RESUMED))
def test_resumed_scheduled_run_matches_the_uninterrupted_run(data_root, tmp_path, case) -> None:
    common = [*tiny_overrides(data_root), "trainer.max_epochs=3", "eval.iw_samples=0"]
    common += ["eval.iwae_ks=[]", "~callbacks.latent_scatter", "~callbacks.latent_manifold"]
    common += ["~callbacks.reconstructions", "~callbacks.samples", "trainer.log_every_n_steps=5"]
    common += RESUMED[case]
    at = 13 if "steps_per_call=3" in RESUMED[case] else 15  # a group starts at step 13
    kill = ["+callbacks.fault._target_=tests.faults.KillAt", f"+callbacks.fault.at_step={at}"]
    keys = ("best_val/elbo", "test/elbo", "test/kl", "samples_seen", "global_step")
    ca, cb = interrupt_resume_compare(tmp_path, common, kill, -9, last_step=10, keys=keys)
    assert cb["lr_schedulers"] == ca["lr_schedulers"] and len(ca["lr_schedulers"]) == 1
    lr = ca["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == cb["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr < 1e-3 / 2 * 1.0001  # the schedule did lower it (from optim.lr = 1e-3)
    # train/lr: logged every 5 steps, what the optimiser used at that step
    logged = {e.step: e.value for e in EventAccumulator(str(tmp_path / "full")).Reload()
              .Scalars("train/lr")}  # fmt: skip
    assert sorted(logged) == list(range(0, 30, 5))
    assert logged[0] == pytest.approx(1e-3) and logged[25] < logged[0]
