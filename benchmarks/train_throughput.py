"""Training throughput of aevb against the machine's matmul bound and two reference loops.

All in one process, same model (784-H-D MLP VAE, Bernoulli decoder, analytic KL), same data,
same optimizer (Adam, lr 1e-3), same batch size:
  (a) the matmul bound: 6 * parameters * N FLOP at the measured torch.mm rate,
  (b) a plain PyTorch loop over index slices of one in-memory tensor,
  (c) a DataLoader-per-sample loop like pytorch/examples' vae/main.py (ToTensor + collate),
  (d) aevb's real path: the composed `aevb-train` config through `aevb.train.train`, Lightning,
      TensorBoard logging and checkpoints on (training-epoch time from a callback).
Times are seconds per 60,000 training images ("epoch"). Subnormal floats are flushed to zero
for all paths, as `aevb-train` does (`--keep-denormals` to compare: Adam's second moments go
subnormal within a few epochs and slow the optimizer step down on x86).

    python benchmarks/train_throughput.py --data-root ../shared/data --epochs 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torchvision
from common import HandVAE, matmul_rate, peak_rss_mb, print_table
from torch.utils.data import DataLoader

EPOCH = 60_000
EPOCH_TIMES: list[float] = []


class EpochTimer(L.Callback):
    """Wall time of every training epoch (training batches only, no validation)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        EPOCH_TIMES.append(time.perf_counter() - self._start)


def run_plain(images: torch.Tensor, args: argparse.Namespace) -> list[float]:
    model = HandVAE(784, args.hidden, args.latent, "relu", gaussian=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = images.flatten(1)
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        perm = torch.randperm(len(x_all))
        for i in range(0, len(x_all), args.batch_size):
            x = torch.bernoulli(x_all[perm[i : i + args.batch_size]])
            opt.zero_grad(set_to_none=True)
            model.loss(x).backward()
            opt.step()
        times.append((time.perf_counter() - start) * EPOCH / len(x_all))
    return times


def run_dataloader(root: str, args: argparse.Namespace) -> list[float]:
    ds = torchvision.datasets.MNIST(
        root, train=True, download=False, transform=torchvision.transforms.ToTensor()
    )
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True)
    model = HandVAE(784, args.hidden, args.latent, "relu", gaussian=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        for x, _ in loader:
            opt.zero_grad(set_to_none=True)
            model.loss(x.flatten(1)).backward()
            opt.step()
        times.append((time.perf_counter() - start) * EPOCH / len(ds))
    return times


def run_aevb(root: str, args: argparse.Namespace, out: Path) -> tuple[list[float], int]:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from aevb.train import config_dir, train

    overrides = [
        f"data.root={root}",
        "data.download=false",
        f"data.val_size={args.val_size}",
        f"data.batch_size={args.batch_size}",
        f"model.hidden_dims=[{args.hidden}]",
        f"model.latent_dim={args.latent}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "+callbacks.epoch_timer._target_=__main__.EpochTimer",
        *args.aevb_overrides,
    ]
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="bench"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    EPOCH_TIMES.clear()
    metrics = train(cfg)
    n_train = metrics["samples_seen"] // max(metrics["epochs"], 1)
    return [t * EPOCH / n_train for t in EPOCH_TIMES], n_train


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", required=True, help="folder holding MNIST/raw/*-ubyte")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--latent", type=int, default=20)
    p.add_argument("--skip-dataloader", action="store_true", help="skip loop (c)")
    p.add_argument("--val-size", type=int, default=5000, help="aevb validation hold-out")
    p.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not flush subnormal floats to zero (aevb-train flushes them; here the mode "
        "is set once for all paths, before the first parallel op starts torch's worker threads)",
    )
    p.add_argument("aevb_overrides", nargs="*", help="extra aevb-train overrides for (d)")
    args = p.parse_args()
    torch.set_flush_denormal(not args.keep_denormals)
    torch.manual_seed(0)

    layers = [
        (784, args.hidden),
        (args.hidden, 2 * args.latent),
        (args.latent, args.hidden),
        (args.hidden, 784),
    ]
    rate = matmul_rate(args.batch_size, layers)
    params = sum(
        m.numel()
        for m in HandVAE(784, args.hidden, args.latent, "relu", gaussian=False).parameters()
    )
    bound = 6 * params * EPOCH / rate
    rows: list[dict[str, object]] = [{"path": "(a) matmul bound", "s/epoch": bound}]
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:  # first, so its peak RSS is its own
        results["aevb"], n_train = run_aevb(args.data_root, args, Path(tmp))
    torch.set_flush_denormal(not args.keep_denormals)  # aevb.train.train turned it on
    rss = {"aevb": peak_rss_mb()}
    ds = torchvision.datasets.MNIST(args.data_root, train=True, download=False)
    results["plain"] = run_plain(ds.data.unsqueeze(1).float() / 255.0, args)
    if not args.skip_dataloader:
        results["dataloader"] = run_dataloader(args.data_root, args)
    labels = {
        "plain": "(b) plain loop, tensor slices",
        "dataloader": "(c) DataLoader per sample",
        "aevb": "(d) aevb-train (Lightning+TB)",
    }

    def typical(times: list[float]) -> float:  # drop the first (warm-up) epoch when there are more
        return statistics.median(times[1:] if len(times) > 1 else times)

    for key in ("plain", "dataloader", "aevb"):
        if key not in results:
            continue
        times = results[key]
        t = typical(times)
        rows.append(
            {
                "path": labels[key],
                "s/epoch": t,
                "samples/s": EPOCH / t,
                "x bound": t / bound,
                "x plain": t / typical(results["plain"]),
                "speedup vs (c)": typical(results["dataloader"]) / t
                if "dataloader" in results
                else None,
            }
        )
    print(
        f"matmul rate {rate / 1e9:.1f} GFLOP/s (the GEMMs of a batch-{args.batch_size} step); "
        f"{params:,} parameters; aevb trains on {n_train:,} images/epoch; times per 60k images; "
        f"{args.epochs} epochs, {torch.get_num_threads()} threads, subnormals "
        f"{'kept' if args.keep_denormals else 'flushed to zero'} (all paths)"
    )
    print_table(rows, ["path", "s/epoch", "samples/s", "x bound", "x plain", "speedup vs (c)"])
    print(f"peak RSS: {rss['aevb']:.0f} MiB after (d) aevb; {peak_rss_mb():.0f} MiB after all")
    assert all(math.isfinite(t) for ts in results.values() for t in ts)


if __name__ == "__main__":
    main()
