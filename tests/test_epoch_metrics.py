"""Epoch sums give exact weighted means of known batches, over ranks too."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from aevb import metrics
from aevb.epoch_metrics import (
    LOGGED_TERMS,
    ELBOSums,
    EvaluationSettings,
    TestPrefix,
    TestSums,
)
from aevb.metrics import ELBOTerms


def batch(recon: list[float], kl_dims: list[list[float]]) -> ELBOTerms:
    """Terms of a batch with these recon values and per-dimension KLs (exact in float32)."""
    per_dim = torch.tensor(kl_dims)
    return ELBOTerms(recon=torch.tensor(recon), kl=per_dim.sum(-1), kl_per_dim=per_dim)


#: two batches of sizes 3 and 1 (halves and quarters: every sum is exact in float32)
BATCHES = [
    (batch([-10.0, -12.5, -8.0], [[1.0, 0.5], [2.0, 0.25], [0.5, 0.0]]), torch.tensor(11.5)),
    (batch([-4.0], [[3.0, 1.0]]), torch.tensor(8.0)),
]


def test_elbo_sums_give_the_means_over_datapoints_not_over_batches() -> None:
    sums = ELBOSums(per_dim=True)
    assert sums.means() is None  # no batch yet: nothing to log
    for terms, loss in BATCHES:
        sums.add(terms, loss)
    means = sums.means()
    assert means is not None and set(means) == {*LOGGED_TERMS, "kl_per_dim"}
    # four datapoints: recon -34.5, KL 4.25 + 4.0 = 8.25 (per dim 6.5, 1.75), loss 11.5*3 + 8*1
    expected = {"recon": -34.5 / 4, "kl": 8.25 / 4, "elbo": -42.75 / 4, "loss": 42.5 / 4}
    for name, value in expected.items():
        assert means[name].dtype == torch.float32
        assert float(means[name]) == value, name  # exact, not approximate
    assert torch.equal(means["kl_per_dim"], torch.tensor([6.5 / 4, 1.75 / 4]))
    assert float(means["loss"]) != (11.5 + 8.0) / 2  # not the mean of batch means


def test_elbo_sums_keep_per_dimension_kl_only_when_asked() -> None:
    sums = ELBOSums()
    sums.add(*BATCHES[0])
    means = sums.means()
    assert means is not None and set(means) == set(LOGGED_TERMS)


def fake_all_reduce(other: list[Tensor]):
    """The `Reduce` of rank 0 in a two-rank sum: adds rank 1's tensors, which it passed in the
    same order (every rank calls the collective with the same tensors in the same order)."""
    pending = list(other)
    return lambda t: t + pending.pop(0)


def test_means_over_ranks_are_the_means_over_every_datapoint() -> None:
    rank0, rank1, together = ELBOSums(per_dim=True), ELBOSums(per_dim=True), ELBOSums(True)
    rank0.add(*BATCHES[0])
    rank1.add(*BATCHES[1])
    for terms, loss in BATCHES:
        together.add(terms, loss)
    sent: list[Tensor] = []
    rank1.means(lambda t: sent.append(t.clone()) or t)
    over_ranks = rank0.means(fake_all_reduce(sent))
    single = together.means()
    assert over_ranks is not None and single is not None
    for name, value in single.items():
        assert torch.equal(over_ranks[name], value), name


def test_test_sums_give_activity_kl_and_bounds_over_all_images_in_float64() -> None:
    g = torch.Generator().manual_seed(0)
    spec = EvaluationSettings(iw_samples=6, iwae_ks=(1, 3), active_threshold=0.5)
    sums = TestSums(spec)
    assert sums.result() is None
    means = [torch.randn(5, 3, generator=g), torch.randn(2, 3, generator=g)]
    means[0][:, 2] *= 0.1  # dimension 2 hardly moves with x: inactive at threshold 0.5
    means[1][:, 2] *= 0.1
    kls = [torch.rand(5, 3, generator=g), torch.rand(2, 3, generator=g)]
    log_ws = [torch.randn(6, 5, generator=g) - 80, torch.randn(6, 2, generator=g) - 80]
    for m, kl, lw in zip(means, kls, log_ws, strict=True):
        sums.add(m, kl, lw)
    assert sums.seen == 7 and all(v.dtype == torch.float64 for v in sums.totals.values())
    result = sums.result()
    assert result is not None
    all_means, all_log_w = torch.cat(means), torch.cat(log_ws, dim=1)
    activity = metrics.latent_activity(all_means)
    torch.testing.assert_close(torch.tensor(result.activity, dtype=torch.float64), activity)
    assert result.values["active_units"] == 2
    exact_kl = torch.cat(kls).double().mean(0)
    torch.testing.assert_close(torch.tensor(result.kl_per_dim, dtype=torch.float64), exact_kl)
    nll = -float(metrics.iwae_bound(all_log_w).mean())
    assert result.values["nll"] == pytest.approx(nll, rel=1e-12)
    for k in (1, 3):
        bound = float(metrics.iwae_bound(all_log_w, k).mean())
        assert result.values[f"iwae_k{k}"] == pytest.approx(bound, rel=1e-12)
    assert -result.values["nll"] >= result.values["iwae_k3"] >= result.values["iwae_k1"]


def test_test_sums_without_importance_samples_give_active_units_only() -> None:
    sums = TestSums(EvaluationSettings())
    sums.add(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.zeros(2, 2), None)
    result = sums.result(lambda t: 2 * t)  # two ranks holding the same images: same means
    assert result is not None and result.values == {"active_units": 1.0}
    assert result.activity == [1.0, 0.0] and result.kl_per_dim == [0.0, 0.0]


def test_testing_as_renames_the_test_prefix_for_one_pass_only() -> None:
    model = TestPrefix()
    assert model.test_prefix == "test"
    with model.testing_as("test_final"):
        assert model.test_prefix == "test_final"
    assert model.test_prefix == "test"
    with pytest.raises(RuntimeError), model.testing_as("test_final"):
        raise RuntimeError("a failed test pass")
    assert model.test_prefix == "test"
