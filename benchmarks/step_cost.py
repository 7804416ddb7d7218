"""Cost of one optimisation step: aevb-train against bare eager loops, interleaved in one run.

Issue 20, goal 1: per optimisation step, `aevb-train` (Lightning, TensorBoard logging,
checkpoints and the divergence guard on) should cost no more than a bare eager PyTorch loop of
the same maths. Three paths train the same recipe on the same data in one process:
  aevb       the composed `aevb-train` config through `aevb.training.train` (the learning
             curves off; validation time is not counted),
  bare-aevb  a plain loop over index slices of the training tensor (dynamic binarization as
             1[U < p] when the recipe binarizes) that calls aevb's own module (`elbo_terms`,
             `loss`) with the same optimizer: what is left of aevb without the framework,
  bare-hand  the same loop over a hand-written MLP VAE (one Linear per layer, closed-form
             Bernoulli or Gaussian log-density and KL): pytorch/examples' style of the maths.
The bare loops run inside the aevb fit, `--chunk` steps each after every `--chunk` aevb steps,
so all three see the same machine state (load, caches, turbo) and the ratios hold on a busy
machine; each path's time is the sum of its chunks over the steps it took. One aevb fit runs
per `--steps-per-call` value (aevb-train's `steps_per_call`: optimisation steps per Lightning
step, `aevb.step_groups`), each against the bare chunks interleaved with it. `--warmup N` leaves
aevb's first N steps out of its per-step time (their wall time is reported on its own): with
`compile.mode=default` they hold Inductor's compilation, which a long run pays once.

    python benchmarks/step_cost.py --data-root ../shared/data --recipe paper_mnist --steps 3000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HandVAE, print_table  # noqa: E402

#: aevb-train overrides per recipe (plus data.root, the budget and the evaluation callbacks off)
RECIPES = {
    "default": [],
    "paper_mnist": ["+experiment=paper_fig2_mnist", "model.latent_dim=20"],
    "paper_frey": ["+experiment=paper_fig2_frey", "model.latent_dim=20"],
}
#: callbacks that evaluate on a grid of sample counts (not per-step costs); image grids stay on
EVALUATION_CALLBACKS = ("learning_curve", "marginal_curve")


#: the hand-written model's shape, from the composed config
HAND_SPEC: dict[str, object] = {}


class Interleave(L.Callback):
    """Times aevb's training steps and runs the bare loops' chunks between them."""

    #: the instance the fit used (Hydra builds it from the config)
    last: Interleave | None = None

    def __init__(self, chunk: int, warmup: int = 0) -> None:
        self.chunk, self.warmup = chunk, warmup
        self.warmup_s: float | None = None  # wall time of aevb's first `warmup` steps
        Interleave.last = self
        self.times: dict[str, float] = {"aevb": 0.0, "bare-aevb": 0.0, "bare-hand": 0.0}
        self.steps: dict[str, int] = dict.fromkeys(self.times, 0)
        self._since: float | None = None
        self._step0 = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        self.images = dm.train_images  # [N, C, H, W]
        self.binarize = dm.binarize == "dynamic"
        opt = trainer.optimizers[0]
        clone = type(pl_module)(**pl_module.hparams).to(pl_module.device)
        clone.load_state_dict(pl_module.state_dict())
        hand = HandVAE(**HAND_SPEC).to(pl_module.device)
        self.bare = {
            "bare-aevb": (clone, type(opt)(clone.parameters(), **opt.defaults)),
            "bare-hand": (hand, type(opt)(hand.parameters(), **opt.defaults)),
        }
        self.batch = trainer.datamodule.batch_size
        self.gen = torch.Generator(device=pl_module.device).manual_seed(0)
        self._started = time.perf_counter()
        if not self.warmup:
            self._resume(trainer)

    def _resume(self, trainer: L.Trainer) -> None:
        self._since, self._step0 = time.perf_counter(), trainer.global_step

    def _pause(self, trainer: L.Trainer) -> None:
        if self._since is not None:
            elapsed = time.perf_counter() - self._since
            steps = trainer.global_step - self._step0
            self.times["aevb"] += elapsed
            self.steps["aevb"] += steps
        self._since = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.warmup_s is None and self.warmup and trainer.global_step >= self.warmup:
            self.warmup_s = time.perf_counter() - self._started  # validation included, if any
            self._resume(trainer)
        if trainer.global_step - self._step0 < self.chunk or self._since is None:
            return
        self._pause(trainer)
        with torch.enable_grad():
            for name in ("bare-aevb", "bare-hand"):
                self._bare_chunk(name)
        self._resume(trainer)

    def _bare_chunk(self, name: str) -> None:
        model, opt = self.bare[name]
        x_all, n = self.images, len(self.images)
        start = time.perf_counter()
        seed = self.steps[name] // self.chunk  # a new order for every chunk
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        order = order.to(x_all.device)
        for i in range(self.chunk):
            j = (i * self.batch) % (n - self.batch + 1)
            x = x_all.index_select(0, order[j : j + self.batch])
            if self.binarize:
                x = (torch.rand(x.shape, generator=self.gen, device=x.device) < x).to(x.dtype)
            if name == "bare-aevb":
                loss = model.loss(model.elbo_terms(x))
            else:
                loss = model.loss(x.flatten(1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        elapsed = time.perf_counter() - start
        self.times[name] += elapsed
        self.steps[name] += self.chunk

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and (self.warmup_s is not None or not self.warmup):
            self._resume(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause(trainer)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", required=True, help="folder holding MNIST/ and FreyFace/")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="paper_mnist")
    p.add_argument("--steps", type=int, default=3000, help="aevb optimisation steps")
    p.add_argument("--chunk", type=int, default=250, help="steps per interleaved chunk")
    p.add_argument(
        "--steps-per-call",
        type=lambda text: [int(k) for k in text.split(",")],
        default=[1, 8],
        help="comma-separated values of aevb-train's steps_per_call: one fit each (default 1,8)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="aevb steps left out of its per-step time (e.g. compilation); reported on their own",
    )
    p.add_argument("overrides", nargs="*", help="extra aevb-train overrides")
    args = p.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from aevb.train import config_dir
    from aevb.training import train

    base = [
        *RECIPES[args.recipe],
        f"data.root={args.data_root}",
        "data.download=false",
        *args.overrides,
    ]
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="step_cost"):
        probe = compose("train", overrides=base)
    batch = probe.data.batch_size
    present = [c for c in EVALUATION_CALLBACKS if probe.callbacks.get(c) is not None]
    overrides = [
        *base,
        f"budget_samples={(args.steps + args.warmup) * batch}",
        "trainer.enable_progress_bar=false",
        *(f"callbacks.{c}=null" for c in present),
        "+callbacks.step_cost._target_=__main__.Interleave",
        f"+callbacks.step_cost.chunk={args.chunk}",
        f"+callbacks.step_cost.warmup={args.warmup}",
    ]
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="step_cost"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    gaussian = cfg.likelihood.name.startswith("gaussian")
    dims = {"mnist": 784, "fashion_mnist": 784, "frey_face": 560}[cfg.data.name]
    spec = {
        "dims": dims,
        "hidden": cfg.model.hidden_dims[0],
        "latent": cfg.model.latent_dim,
        "act": cfg.model.activation,
        "gaussian": gaussian,
    }
    HAND_SPEC.update(spec)
    rows = []
    for k in args.steps_per_call:
        with initialize_config_dir(config_dir(), version_base="1.3", job_name="step_cost"):
            run_cfg = compose(
                "train", overrides=[*overrides, f"steps_per_call={k}"], return_hydra_config=True
            )
        with tempfile.TemporaryDirectory() as tmp:
            run_cfg.hydra.runtime.output_dir = tmp
            HydraConfig.instance().set_config(run_cfg)
            train(run_cfg)
        timer = Interleave.last
        assert timer is not None
        ms = {name: 1e3 * timer.times[name] / max(timer.steps[name], 1) for name in timer.times}
        rows.append(
            {
                "steps_per_call": k,
                "aevb steps": timer.steps["aevb"],
                "warm-up s": "-" if timer.warmup_s is None else f"{timer.warmup_s:.3g}",
                "aevb ms/step": ms["aevb"],
                "bare-aevb ms/step": ms["bare-aevb"],
                "bare-hand ms/step": ms["bare-hand"],
                "x bare-aevb": ms["aevb"] / ms["bare-aevb"],
                "x bare-hand": ms["aevb"] / ms["bare-hand"],
            }
        )
    print(
        f"recipe {args.recipe}: batch {batch}, {torch.get_num_threads()} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), bare chunks of "
        f"{args.chunk} steps interleaved, load average {os.getloadavg()[0]:.1f}"
        + (f"; overrides: {' '.join(args.overrides)}" if args.overrides else "")
    )
    print_table(rows, list(rows[0]))
    for row in rows:
        print(
            f"goal 1 (steps_per_call={row['steps_per_call']}): aevb-train = "
            f"{row['x bare-aevb']:.2f}x the bare loop of aevb's maths, "
            f"{row['x bare-hand']:.2f}x the hand-written loop per optimisation step (goal <= 1.0)"
        )


if __name__ == "__main__":
    main()
