"""How much the Fig. 2 bound estimate moves: the paper omits error bars because "the variance of
the estimated lower bound was small (< 1)" (Fig. 2 caption); this measures it for our runs.

    python scripts/bound_spread.py RUN [RUN ...] [--checkpoint last|best] [--repeats 10]

For each run: the test split's average ELBO per datapoint (nats, L = 1 draw per image, as the
learning curve computes it: `aevb.learning_curve.LearningCurve.mean_elbo`) evaluated `repeats`
times with different z draws. Printed per run: the mean of those averages, their standard
deviation (the estimator's own noise: what an error bar of the plotted point would show), and the
standard error over images (std of the per-image bound / sqrt(n): how much another test set of
the same size would move it). A Markdown table, ready for docs/reproduction.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from aevb.runs import load_run


@torch.no_grad()
def per_image_elbo(model: torch.nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The L = 1 ELBO of every image of x (nats, float64)."""
    return torch.cat(
        [model.elbo(x[i : i + batch], samples=1).double() for i in range(0, len(x), batch)]
    )


def spread(run_dir: Path, checkpoint: str, repeats: int) -> dict[str, float]:
    """Mean, std over z draws and standard error over images of the test bound of one run."""
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    with tempfile.TemporaryDirectory() as tmp:  # a running job may rewrite last.ckpt meanwhile
        copy = Path(tmp) / ckpt.name
        shutil.copyfile(ckpt, copy)
        run = load_run(run_dir, checkpoint=copy)
    run.datamodule.setup("test")
    x = run.datamodule.test_images
    averages, first = [], None
    for seed in range(repeats):
        torch.manual_seed(seed)
        values = per_image_elbo(run.model, x)
        first = values if first is None else first
        averages.append(float(values.mean()))
    means = torch.tensor(averages, dtype=torch.float64)
    return {
        "images": len(x),
        "mean": float(means.mean()),
        "std_z": float(means.std()) if repeats > 1 else float("nan"),
        "se_images": float(first.std() / len(x) ** 0.5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="aevb-train run directories")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last")
    parser.add_argument("--repeats", type=int, default=10, help="z draws per image (>= 2)")
    args = parser.parse_args()
    if args.repeats < 2:
        sys.exit("bound_spread.py: error: --repeats must be >= 2 (a spread needs two draws)")
    print("| run | test images | test bound (mean) | std over z draws | std error over images |")
    print("|---|---|---|---|---|")
    for run_dir in args.runs:
        r = spread(run_dir.resolve(), args.checkpoint, args.repeats)
        print(f"| {run_dir.name} | {r['images']} | {r['mean']:.2f} | {r['std_z']:.3f} "
              f"| {r['se_images']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
