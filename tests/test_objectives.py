"""The objective: estimators A and B, beta and its warm-up, free bits, sweeps over them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aevb import metrics
from aevb.vae import VAE

from .conftest import run_cli, tiny_overrides


def _small_model(**kw) -> tuple[VAE, torch.Tensor]:
    torch.manual_seed(0)
    model = VAE(data_shape=(1, 6, 6), latent_dim=3, hidden_dims=[16], **kw)
    x = (torch.rand(4, 1, 6, 6) > 0.5).float()
    return model, x


@torch.no_grad()
def test_estimators_a_and_b_agree_in_expectation_and_b_has_lower_variance() -> None:
    model, x = _small_model()
    posterior, prior = model.encode(x), model.prior
    draws = {}
    for kl in ("mc", "analytic"):  # estimator A (eq. 7) and B (eq. 10), one sample each
        torch.manual_seed(1)
        draws[kl] = torch.stack(
            [metrics.elbo(x, posterior, model.decode, prior, 1, kl).elbo for _ in range(4000)]
        )  # [R, B]
    a, b = draws["mc"], draws["analytic"]
    n = a.shape[0]
    se = torch.sqrt(a.var(0) / n + b.var(0) / n)
    assert ((a.mean(0) - b.mean(0)).abs() < 3 * se).all(), (a.mean(0), b.mean(0), se)
    assert (b.var(0) < a.var(0)).all(), (b.var(0), a.var(0))


def test_beta_warmup_and_cycles_follow_the_schedule() -> None:
    assert VAE(beta=2.0).beta_at(7) == 2.0
    warm = VAE(beta=2.0, kl_warmup_steps=10)
    assert [warm.beta_at(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    cyc = VAE(beta=1.0, kl_warmup_steps=4, kl_cycle_steps=8)
    assert [cyc.beta_at(s) for s in (0, 2, 4, 7, 8, 10)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]


@torch.no_grad()
def test_loss_weights_kl_by_beta_and_free_bits_floor_each_dimension() -> None:
    model, x = _small_model(beta=3.0)
    terms = model.elbo_terms(x)
    assert model.loss(terms) == pytest.approx(
        float(3.0 * terms.kl.mean() - terms.recon.mean()), rel=1e-6
    )
    assert model.loss(terms, beta=0.0) == pytest.approx(float(-terms.recon.mean()), rel=1e-6)
    fb, _ = _small_model(free_bits=0.5)
    floor = terms.kl_per_dim.mean(0).clamp(min=0.5).sum()
    assert fb.loss(terms, beta=1.0) == pytest.approx(float(floor - terms.recon.mean()), rel=1e-6)
    assert float(floor) >= float(terms.kl.mean())
    # the bound itself ignores beta and free bits
    assert torch.allclose(terms.elbo, terms.recon - terms.kl)


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["histograms"]:
            out.setdefault(tag, []).extend(
                (e.step, e.histogram_value.num) for e in acc.Histograms(tag)
            )
    return out


def test_logged_beta_follows_warmup_and_elbo_stays_the_beta_one_bound(data_root, tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            *tiny_overrides(data_root),
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=2",
            "model.beta=2.0",
            "model.kl_warmup_steps=15",
            "model.kl=mc",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = _scalars(run_dir)
    betas = dict(s["train/beta"])
    assert len(betas) >= 8 and min(betas) == 0
    for step, value in betas.items():
        assert value == pytest.approx(2.0 * min(1.0, step / 15), abs=1e-6), step
    for prefix in ("train", "val", "test"):
        elbo, recon, kl = (s[f"{prefix}/{t}"][-1][1] for t in ("elbo", "recon", "kl"))
        assert elbo == pytest.approx(recon - kl, abs=1e-3), prefix
    val_loss, val_recon, val_kl = (s[f"val/{t}"][-1][1] for t in ("loss", "recon", "kl"))
    assert val_loss == pytest.approx(2.0 * val_kl - val_recon, abs=1e-3)  # beta=2 in the loss
    assert "val/kl_per_dim" in s and s["val/kl_per_dim"][-1][1] == 4  # one entry per dimension
    assert 0 <= s["val/kl_active_dims"][-1][1] <= 4
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["hparams"]["kl"] == "mc" and m["hparams"]["kl_warmup_steps"] == 15


def test_multirun_over_likelihoods_and_betas_records_each_jobs_settings(
    data_root, tmp_path
) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            *tiny_overrides(data_root),
            "trainer.limit_train_batches=2",
            "eval.iw_samples=5",
            "eval.iwae_ks=[1]",
            "likelihood=bernoulli,gaussian",
            "model.beta=0.5,1",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = set()
    for metrics_file in sorted(sweep.glob("*/metrics.json")):
        m = json.loads(metrics_file.read_text())
        overrides = (metrics_file.parent / ".hydra" / "overrides.yaml").read_text()
        lik, beta = m["hparams"]["likelihood"], m["hparams"]["beta"]
        assert f"likelihood={lik}" in overrides and f"model.beta={beta:g}" in overrides
        assert math.isfinite(m["test/elbo"])
        seen.add((lik, beta))
    assert seen == {(lik, b) for lik in ("bernoulli", "gaussian") for b in (0.5, 1.0)}
