"""`aevb-eval` end to end: a tiny 2-D-latent run, evaluated into eval.json; bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from aevb import evaluate

from .conftest import check_light_answer, run_cli, tiny_overrides


@pytest.fixture(scope="module")
def run_dir(data_root, tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("eval")
    run_dir = cwd / "run"
    proc = run_cli(
        [
            *tiny_overrides(data_root),
            "model.latent_dim=2",
            "eval.iw_samples=20",
            "eval.iwae_ks=[1,5]",
            f"hydra.run.dir={run_dir}",
        ],
        cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_aevb_eval_writes_eval_json_beside_metrics(run_dir) -> None:
    before = (run_dir / "metrics.json").read_text()
    train_metrics = json.loads(before)
    assert {"test/nll", "test/iwae_k1", "test/iwae_k5", "test/active_units"} <= set(train_metrics)
    proc = run_cli([str(run_dir), "eval.iw_samples=400"], run_dir.parent, script="aevb.evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/nll=" in proc.stdout and "gap" in proc.stdout and " s)" in proc.stdout
    record = json.loads((run_dir / "eval.json").read_text())
    assert (run_dir / "metrics.json").read_text() == before  # never overwritten
    assert record["eval"]["iw_samples"] == 400 and record["eval"]["iwae_ks"] == [1, 5, 50]
    assert record["num_test"] == 200 and record["checkpoint"] == "checkpoints/best.ckpt"
    nll, elbo = record["test/nll"], record["test/elbo"]
    assert math.isfinite(nll) and record["gap"] == pytest.approx(-elbo - nll)
    # k=400 is at least as tight as k=20 at training time, and tighter than the ELBO
    assert nll <= train_metrics["test/nll"] + 0.5 and nll < -record["test/iwae_k1"]
    assert record["test/iwae_k1"] <= record["test/iwae_k5"] <= record["test/iwae_k50"] <= -nll
    assert len(record["test/kl_per_dim"]) == 2 and len(record["test/latent_activity"]) == 2
    assert sum(record["test/kl_per_dim"]) == pytest.approx(record["test/kl"], rel=1e-4)


def test_aevb_eval_accepts_a_checkpoint_path(run_dir) -> None:
    record = evaluate.evaluate(run_dir / "checkpoints" / "last.ckpt", ["eval.iw_samples=3"])
    assert record["checkpoint"] == "checkpoints/last.ckpt" and record["eval"]["iwae_ks"] == [1]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["/no/such/run"], "does not exist"),
        (["{run}", "eval.iw_samples=-1"], "eval.iw_samples"),
        (["{run}", "eval.bogus=1"], "eval.bogus"),
        (["{run}/metrics.json"], "neither a run directory nor a .ckpt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_dir, args, needle, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate.main([a.format(run=run_dir) for a in args])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("aevb-eval: error:") and needle in err
    assert "\n" not in err


def test_aevb_eval_marginal_hmc_adds_the_appendix_d_estimate(run_dir) -> None:
    import torch

    from aevb.runs import load_run

    record = evaluate.evaluate(run_dir, ["eval.iw_samples=0", "eval.iwae_ks=[]",
                                         "eval.marginal=hmc", "eval.hmc_points=10"])  # fmt: skip
    assert record["hmc_points"] == 10 and record["eval"]["marginal"] == "hmc"
    # the same 10 test images by importance sampling with k = 20000 (a lower bound of log p(x),
    # tight with Nz = 2): the Appendix D estimate agrees to a fraction of a nat
    run = load_run(run_dir)
    run.datamodule.setup("test")
    x = run.datamodule.test_images[:10]
    log_px = run.model.log_likelihood(x, k=20000, generator=torch.Generator().manual_seed(0))
    assert record["test/nll_hmc"] == pytest.approx(-float(log_px.mean()), abs=0.3)
    summary = evaluate.summary(record, run_dir)
    assert "test/nll_hmc=" in summary and "hmc on 10" in summary


def test_aevb_eval_refuses_an_unknown_marginal(run_dir, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluate.main([str(run_dir), "eval.marginal=ais"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "eval.marginal must be one of ['hmc', 'none']" in err


#: (arguments, exit status, what the output says): answered before torch and Lightning load
LIGHT_COMMANDS = [
    (["--help"], 0, "usage: aevb-eval"),
    (["--no-such-option", "{run}"], 2, "unrecognized arguments: --no-such-option"),
    (["/no/such/run"], 2, "/no/such/run does not exist"),
    (["{tmp}"], 2, "is not an aevb run directory"),
    (["{run}/notes.txt"], 2, "neither a run directory nor a .ckpt"),
    (["{run}/checkpoints/best.ckpt"], 2, "best.ckpt does not exist"),
    (["{run}", "eval.iw_samples=-1"], 2, "eval.iw_samples must be an integer >= 0, got -1"),
    (["{run}", "eval.bogus=1"], 2, "eval.bogus must be one of ['hmc_points', "),
    (["{run}", "eval.marginal=ais"], 2, "eval.marginal must be one of ['hmc', 'none']"),
    (["{run}", "accelerator=tpu"], 2, "accelerator must be one of ['auto', 'cpu', 'gpu']"),
    (["{run}", "iw_samples"], 2, "an override key=value"),
]


@pytest.mark.parametrize(
    ("args", "code", "needle"), LIGHT_COMMANDS, ids=[" ".join(a) for a, _, _ in LIGHT_COMMANDS]
)
def test_help_and_refusals_load_neither_torch_nor_lightning(tmp_path, args, code, needle) -> None:
    """aevb.evaluate checks the command line before the evaluation job (aevb.evaluation)."""
    run = tmp_path / "run"  # a run dir without checkpoints: nothing to evaluate, all refused
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model: {}\n")
    (run / "notes.txt").write_text("")
    argv = [a.format(run=run, tmp=tmp_path) for a in args]
    check_light_answer("aevb.evaluate", "aevb-eval", argv, tmp_path, code, needle)
