"""Importance-weighted NLL throughput (`VAE.log_likelihood`) against its matmul bound.

The bound counts the decoder GEMMs of every importance sample (2 * (D*H + H*784) FLOP per
sample and datapoint, encoder negligible) at the measured torch.mm rate for the same shapes.
Everything else (sampling z, the Bernoulli log-density over 784 pixels, logsumexp) is what the
ratio to the bound measures. Subnormal floats are flushed to zero, as `aevb-eval` does.

    python benchmarks/eval_throughput.py --data-root ../shared/data --k 5000
    python benchmarks/eval_throughput.py --n-test 200 --k 50          # random data, seconds
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from common import peak_rss_mb, print_table

from aevb.metrics import IW_CHUNK
from aevb.vae import VAE


def gemm_rate(rows: int, shapes: list[tuple[int, int]], seconds: float = 1.0) -> float:
    """Best FLOP/s of the forward GEMMs [rows, n_in] @ [n_in, n_out] (inference only)."""
    mats = [(torch.randn(rows, i), torch.randn(i, o)) for i, o in shapes]
    flop = sum(2 * rows * i * o for i, o in shapes)
    for x, w in mats:
        x @ w
    best = 0.0
    for _ in range(3):
        reps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            for x, w in mats:
                x @ w
            reps += 1
        best = max(best, flop * reps / elapsed)
    return best


def test_images(root: str | None, n: int) -> torch.Tensor:
    """The first n MNIST test images, binarized once with a fixed seed (random if no root)."""
    g = torch.Generator().manual_seed(0)
    if root is None:
        return (torch.rand(n, 1, 28, 28, generator=g) < 0.13).float()
    ds = torchvision.datasets.MNIST(root, train=False, download=False)
    grey = ds.data[:n].unsqueeze(1).float() / 255.0
    return (torch.rand(grey.shape, generator=g) < grey).float()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", default=None, help="folder holding MNIST/raw (else random)")
    p.add_argument("--checkpoint", default=None, help="a trained .ckpt (else a fresh model)")
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--chunk", type=int, default=None, help="decoder rows per pass")
    p.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not flush subnormal floats to zero (aevb-eval flushes them)",
    )
    args = p.parse_args()
    torch.set_flush_denormal(not args.keep_denormals)  # before torch starts its worker threads
    torch.manual_seed(0)
    if args.checkpoint:
        model = VAE.load_from_checkpoint(args.checkpoint, map_location="cpu")
    else:
        model = VAE(latent_dim=args.latent, hidden_dims=[args.hidden])
    model.eval()
    hidden, latent = model.hparams.hidden_dims[0], model.hparams.latent_dim
    x = test_images(args.data_root, args.n_test)
    chunk = args.chunk or IW_CHUNK["cpu"]
    rows = args.n_test * args.k
    flop = 2 * rows * (latent * hidden + hidden * 784)
    rate = gemm_rate(chunk, [(latent, hidden), (hidden, 784)])
    bound = flop / rate

    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    log_px = torch.cat(
        [
            model.log_likelihood(xb, args.k, chunk=args.chunk, generator=g)
            for xb in x.split(1000)  # as aevb-eval batches the test set
        ]
    )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        elbo = torch.cat([model.elbo(xb) for xb in x.split(1000)]).mean()
    print(
        f"{args.n_test:,} images x k={args.k:,} = {rows:,} decoder rows (chunk {chunk}); "
        f"decoder GEMM rate {rate / 1e9:.1f} GFLOP/s; {torch.get_num_threads()} threads; "
        f"subnormals {'kept' if args.keep_denormals else 'flushed to zero'}"
    )
    print_table(
        [
            {"path": "(a) GEMM bound", "seconds": bound},
            {
                "path": "(b) VAE.log_likelihood",
                "seconds": seconds,
                "rows/s": rows / seconds,
                "x bound": seconds / bound,
            },
        ],
        ["path", "seconds", "rows/s", "x bound"],
    )
    print(
        f"NLL = {-log_px.mean():.3f} nats, -ELBO = {-elbo:.3f} nats "
        f"(gap {log_px.mean() - elbo:.3f})"
    )
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
