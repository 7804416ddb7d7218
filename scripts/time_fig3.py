"""Time the pieces of a Fig. 3 run on real MNIST, to extrapolate the 6*10^7-sample budget.

    python scripts/time_fig3.py --data-root ../shared/data [--batches 60] [--threads 1]

Per algorithm of `+experiment=paper_fig3` (the recipe's model, optimiser and minibatch of 100):
seconds per training minibatch (median over `--batches`, after 3 warm-up batches; MCEM: the
first-visit minibatches with their burn-in, and minibatches of chains already running), and
seconds of one Appendix D estimate (`aevb.marginal_curve.marginal_log_likelihood`, the paper's
settings) of 100 test points. Prints a JSON record (wall and process CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from aevb.config import Settings
from aevb.data import ImageDataModule
from aevb.marginal_curve import marginal_log_likelihood
from aevb.mcem import MonteCarloEM
from aevb.train import config_dir
from aevb.vae import VAE
from aevb.wake_sleep import WakeSleep


class BatchTimer(L.Callback):
    """Wall and CPU seconds of every training minibatch."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self._t = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.wall.append(time.perf_counter() - self._t[0])
        self.cpu.append(time.process_time() - self._t[1])


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 5)


def time_algorithm(root: str, algorithm: str, num_train: int, batches: int) -> dict[str, Any]:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", ["+experiment=paper_fig3", f"model.algorithm={algorithm}",
                                f"data.num_train={num_train}", f"data.root={root}",
                                "data.download=false"])  # fmt: skip
    settings = Settings.from_cfg(cfg)
    L.seed_everything(0, verbose=False)
    dm = ImageDataModule(**settings.datamodule_kwargs())
    dm.setup("fit")
    cls = {"wake_sleep": WakeSleep, "mcem": MonteCarloEM}.get(algorithm, VAE)
    model = cls(**settings.model_kwargs(dm.data_shape, len(dm.train_images)))
    out: dict[str, Any] = {"algorithm": algorithm, "num_train": num_train}

    def fit(steps: int) -> BatchTimer:
        timer = BatchTimer()
        trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            accelerator="cpu", limit_val_batches=0, callbacks=[timer])  # fmt: skip
        trainer.fit(model, dm.train_dataloader())
        return timer

    per_batch = getattr(model, "optimizer_steps_per_batch", 1)
    if isinstance(model, MonteCarloEM):
        first = fit(per_batch * min(batches, 10))  # first visits: burn-in proposals
        out["first_visit_s"] = _median(first.wall[3:])
        out["first_visit_cpu_s"] = _median(first.cpu[3:])
        model.chain_visited.fill_(True)  # from here on: one proposal per visit
    timer = fit(per_batch * batches + model.global_step)
    out["batch_s"] = _median(timer.wall[3:])
    out["batch_cpu_s"] = _median(timer.cpu[3:])
    x = dm.test_images[:100]
    t = (time.perf_counter(), time.process_time())
    log_px = marginal_log_likelihood(model, x)
    out["appendix_d_100_s"] = round(time.perf_counter() - t[0], 3)
    out["appendix_d_100_cpu_s"] = round(time.process_time() - t[1], 3)
    out["test_log_px_100"] = round(float(log_px.mean()), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algorithms", default="aevb,wake_sleep,mcem")
    parser.add_argument("--num-train", default="1000,50000")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    records = []
    for n in map(int, args.num_train.split(",")):
        for algo in args.algorithms.split(","):
            records.append(time_algorithm(args.data_root, algo, n, args.batches))
            print(json.dumps(records[-1]), flush=True)
    load = os.getloadavg()
    print(json.dumps({"threads": args.threads, "loadavg": [round(v, 1) for v in load]}))


if __name__ == "__main__":
    main()
