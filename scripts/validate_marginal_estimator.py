"""Accuracy of the Appendix D marginal-likelihood estimator (aevb.hmc) where log p(x) is known.

    python scripts/validate_marginal_estimator.py [--points 200] [--seed 0]
    python scripts/validate_marginal_estimator.py --latent-dims 2,3,5,10,20,50 [--data-dim 100]

Two models with known log p(x), per datapoint, float64:
- linear-Gaussian: z ~ N(0, I_2), x|z ~ N(Wz + b, 0.5^2 I_10): log p(x) in closed form;
- nonlinear: z ~ N(0, I_2), x|z ~ Bernoulli(tanh-MLP(z)), 40 pixels: log p(x) by the midpoint
  rule on a 400 x 400 grid over [-7, 7]^2 (agrees with 300 x 300 to < 0.001 nat).
For each: the estimator at the paper's settings (50 draws, 4 leapfrog steps) and with more,
thinned draws, and importance sampling with k prior draws, as error = estimate - truth: mean
(bias), standard deviation over datapoints (spread) and the largest |error|. With
`--latent-dims`, instead: the linear-Gaussian model with z in R^Nz for each Nz given and
`--data-dim` observed dimensions, both estimator settings per Nz (how the estimate degrades
with the latent dimension, the reason the paper gives for Nz = 3 in Fig. 3). The tables are
what docs/evaluation.md reports.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aevb.hmc import appendix_d_log_likelihood  # noqa: E402
from tests.test_hmc import F64, _linear_gaussian, _nonlinear, prior_importance_sampling  # noqa: E402  the same models


def _row(name: str, err: torch.Tensor, seconds: float) -> str:
    return (f"| {name} | {float(err.mean()):+.3f} | {float(err.std()):.3f} | "
            f"{float(err.abs().max()):.3f} | {seconds:.1f} |")  # fmt: skip


#: the estimator's settings compared: the paper's, and more draws thinned
SETTINGS = (("App. D, paper (50 draws, 4 leapfrog)", {}),
            ("App. D, 200 draws, thin 2", {"num_samples": 200, "thin": 2}))  # fmt: skip


def latent_dimension_table(n: int, seed: int, latent_dims: Iterable[int], data_dim: int) -> None:
    """Error of both settings on the linear-Gaussian model, one row per (Nz, setting)."""
    print("| Nz | estimator | bias (nats) | spread (sd) | max abs error | seconds |")
    print("|---|---|---|---|---|---|")
    for nz in latent_dims:
        joint, truth, _ = _linear_gaussian(n, seed, latent_dim=nz, data_dim=data_dim)
        for label, kw in SETTINGS:
            start = time.perf_counter()
            est = appendix_d_log_likelihood(joint, torch.zeros(n, nz, dtype=F64),
                                            generator=torch.Generator().manual_seed(seed),
                                            **kw)  # fmt: skip
            print(_row(f"{nz} | {label}", est - truth, time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-dims", help="comma-separated Nz: the latent-dimension table")
    parser.add_argument("--data-dim", type=int, default=100)
    args = parser.parse_args()
    n = args.points
    if args.latent_dims:
        latent_dimension_table(n, args.seed, map(int, args.latent_dims.split(",")), args.data_dim)
        return
    lin_joint, lin_truth, _ = _linear_gaussian(batch=n, seed=args.seed)
    nl_joint, logits, x, quadrature = _nonlinear(batch=n)
    nl_truth = quadrature(400)
    print("| model / estimator | bias (nats) | spread (sd) | max abs error | seconds |")
    print("|---|---|---|---|---|")
    for model, joint, truth in (("linear-Gaussian", lin_joint, lin_truth),
                                ("nonlinear Nz=2", nl_joint, nl_truth)):  # fmt: skip
        for label, kw in SETTINGS:
            start = time.perf_counter()
            est = appendix_d_log_likelihood(joint, torch.zeros(n, 2, dtype=F64),
                                            generator=torch.Generator().manual_seed(args.seed),
                                            **kw)  # fmt: skip
            print(_row(f"{model}: {label}", est - truth, time.perf_counter() - start))
    for k in (100, 10_000, 100_000):
        start = time.perf_counter()
        est = prior_importance_sampling(logits, x, k, seed=args.seed)
        print(_row(f"nonlinear Nz=2: IS, k = {k} prior draws", est - nl_truth,
                   time.perf_counter() - start))  # fmt: skip


if __name__ == "__main__":
    main()
