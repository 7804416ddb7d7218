"""aevb-eval's importance-weighted NLL throughput against its decoder-GEMM bound.

Runs the per-batch work of `aevb-eval`'s test step (`VAE.test_step` with `eval.iw_samples=k`:
encode, k importance samples keyed per example by `aevb.rng.KeyedNormal`, decoder and Bernoulli
log-density in chunks, the NLL and IWAE bounds in float64) over test batches of 1,000 images.
The bound is the time of the decoder GEMMs of every importance sample ([rows, D] @ [D, H] and
[rows, H] @ [H, 784] in chunks; the encoder is negligible), a tenth of them timed before each
batch, so a busy machine slows bound and aevb alike: the ratio is taken in one run. What the
ratio measures is everything besides the GEMMs: sampling z, the log-density over 784 pixels,
logsumexp. Subnormal floats are flushed to zero, as aevb-eval does. `--log-prob` adds the same
work with torch.distributions' `Bernoulli.log_prob` (the path before
`aevb.metrics.binary_log_density`), interleaved too.

    python benchmarks/eval_throughput.py --data-root ../shared/data --k 5000       # goal 3
    python benchmarks/eval_throughput.py --n-test 1000 --k 500 --log-prob          # minutes
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torchvision
from common import peak_rss_mb, print_table

from aevb import metrics
from aevb.epoch_metrics import EvaluationSettings, TestSums
from aevb.numerics import full_precision
from aevb.vae import VAE

#: aevb-eval's goal: at most this many times its decoder-GEMM bound (issue 20, goal 3)
GOAL = 1.5


def gemm_seconds(rows: int, chunk: int, shapes: list[tuple[int, int]], fraction: float) -> float:
    """Seconds of the forward GEMMs [rows, n_in] @ [n_in, n_out] in `chunk`-row pieces, from
    timing `fraction` of them (at least one piece): the mean rate over that time, not a best-of,
    so a busy machine slows it as much as the path it is compared with."""
    mats = [(torch.randn(chunk, i), torch.randn(i, o)) for i, o in shapes]
    for x, w in mats:
        x @ w
    pieces = max(1, round(fraction * rows / chunk))
    start = time.perf_counter()
    for _ in range(pieces):
        for x, w in mats:
            x @ w
    return (time.perf_counter() - start) * rows / (pieces * chunk)


def test_images(root: str | None, n: int) -> torch.Tensor:
    """The first n MNIST test images, binarized once with a fixed seed (random if no root)."""
    g = torch.Generator().manual_seed(0)
    if root is None:
        return (torch.rand(n, 1, 28, 28, generator=g) < 0.13).float()
    ds = torchvision.datasets.MNIST(root, train=False, download=False)
    grey = ds.data[:n].unsqueeze(1).float() / 255.0
    return (torch.rand(grey.shape, generator=g) < grey).float()


@contextmanager
def generic_log_prob() -> Iterator[None]:
    """Inside: the decoder's Bernoulli.log_prob instead of `metrics.binary_log_density`."""
    fast = metrics.bernoulli_logits
    metrics.bernoulli_logits = lambda px: None
    try:
        yield
    finally:
        metrics.bernoulli_logits = fast


def test_batch(model: VAE, x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """The importance-weighted part of `VAE.test_step` on one batch: its sums."""
    sums = TestSums(model.evaluation)
    with torch.inference_mode(), full_precision():
        model.add_test_metrics(x, index, sums)
    return sums.totals


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", default=None, help="folder holding MNIST/raw (else random)")
    p.add_argument("--checkpoint", default=None, help="a trained .ckpt (else a fresh model)")
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--batch", type=int, default=1000, help="test images per batch (aevb-eval)")
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--chunk", type=int, default=None, help="decoder rows per pass")
    p.add_argument("--log-prob", action="store_true", help="also time Bernoulli.log_prob")
    p.add_argument(
        "--bound-fraction", type=float, default=0.1, help="share of the GEMMs timed per batch"
    )
    p.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not flush subnormal floats to zero (aevb-eval flushes them)",
    )
    args = p.parse_args()
    torch.set_flush_denormal(not args.keep_denormals)  # before torch starts its worker threads
    torch.manual_seed(0)
    ks = tuple(k for k in (1, 5, 50) if k <= args.k)  # aevb-eval's default eval.iwae_ks
    evaluation = EvaluationSettings(iw_samples=args.k, iwae_ks=ks, chunk=args.chunk)
    if args.checkpoint:
        model = VAE.load_from_checkpoint(args.checkpoint, map_location="cpu", evaluation=evaluation)
    else:
        model = VAE(latent_dim=args.latent, hidden_dims=[args.hidden], evaluation=evaluation)
    model.eval()
    hidden, latent = model.hparams.hidden_dims[0], model.hparams.latent_dim
    x = test_images(args.data_root, args.n_test)
    chunk = args.chunk or metrics.IW_CHUNK["cpu"]
    shapes = [(latent, hidden), (hidden, 784)]
    paths = {"aevb": lambda xb, ib: test_batch(model, xb, ib)}
    if args.log_prob:
        paths["log_prob"] = lambda xb, ib: _generic(model, xb, ib)
    seconds = dict.fromkeys(paths, 0.0)
    bound = 0.0
    sums: dict[str, dict[str, float]] = {name: {} for name in paths}
    for start in range(0, args.n_test, args.batch):
        xb = x[start : start + args.batch]
        index = torch.arange(start, start + xb.shape[0])
        bound += gemm_seconds(xb.shape[0] * args.k, chunk, shapes, args.bound_fraction)
        for name, run in paths.items():
            t = time.perf_counter()
            acc = run(xb, index)
            seconds[name] += time.perf_counter() - t
            for key, value in acc.items():
                sums[name][key] = sums[name].get(key, 0.0) + float(value.sum())
    rows = args.n_test * args.k
    print(
        f"{args.n_test:,} images x k={args.k:,} = {rows:,} decoder rows (chunk {chunk}, "
        f"batches of {args.batch}); {torch.get_num_threads()} threads; subnormals "
        f"{'kept' if args.keep_denormals else 'flushed to zero'}"
    )
    table = [{"path": "(a) decoder GEMM bound", "seconds": bound, "x bound": 1.0}]
    labels = {"aevb": "(b) aevb-eval test step", "log_prob": "(c) same, Bernoulli.log_prob"}
    for name, s in seconds.items():
        table.append({"path": labels[name], "seconds": s, "rows/s": rows / s, "x bound": s / bound})
    print_table(table, ["path", "seconds", "rows/s", "x bound"])
    nll = {name: -acc["log_px"] / acc["n"] for name, acc in sums.items()}
    iwae1 = sums["aevb"]["iwae_k1"] / sums["aevb"]["n"]
    print(f"NLL = {nll['aevb']:.5f} nats, IWAE_1 = {iwae1:.5f} nats")
    if "log_prob" in nll:
        print(f"NLL with Bernoulli.log_prob = {nll['log_prob']:.5f} nats")
    ratio = seconds["aevb"] / bound
    print(
        f"goal 3: aevb-eval k={args.k} = {ratio:.2f}x its decoder-GEMM bound "
        f"({'meets' if ratio <= GOAL else 'misses'} <= {GOAL}x); peak RSS {peak_rss_mb():.0f} MiB"
    )


def _generic(model: VAE, x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
    with generic_log_prob():
        return test_batch(model, x, index)


if __name__ == "__main__":
    main()
