"""`aevb-step-size`: choose a recipe's Adagrad step size as the AEVB paper did (section 5).

    aevb-step-size paper_fig2_mnist data.root=../shared/data [--latent-dims 2,3,5,10,20,200]

"Stepsizes were adapted with Adagrad; the Adagrad global stepsize parameters were chosen from
{0.01, 0.02, 0.1} based on performance on the training set in the first few iterations." For
every (algorithm, Nz) of the recipe's sweep and every candidate step size, one probe run of
`aevb-train +experiment=<recipe>` trains for `--probe-samples` training samples (default 10^5);
its score is the training lower bound at that point (the last point of its learning curve: the
fixed training subset of the recipe's LearningCurve). The best-scoring step size per
(algorithm, Nz) is written to `conf/experiment/paper/step_size_<data>.yaml`, which the recipe
reads through `optim.lr: ${paper_step_size.<algorithm>.nz<Nz>}`, and the whole table to
`docs/reproduction/step_size_<data>.md`. A probe that diverges (non-finite loss or gradient,
stopped by the divergence guard) scores -inf. Probes run as separate processes, `--jobs` at a
time; re-running skips finished probes, so the command can be interrupted and resumed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from aevb.atomic import write_bytes_atomic
from aevb.errors import StepSizeError
from aevb.rundir import RunDir

#: the paper's candidate Adagrad step sizes
PAPER_STEP_SIZES = (0.01, 0.02, 0.1)
#: training samples of a probe: "the first few iterations" (10^3 steps of M = 100)
PROBE_SAMPLES = 100_000
#: settings of a probe beyond the recipe: no test-time importance sampling, no image callbacks
PROBE_OVERRIDES = (
    "eval.iw_samples=0",
    "eval.iwae_ks=[]",
    "callbacks.reconstructions=null",
    "callbacks.samples=null",
    "callbacks.latent_manifold=null",
    "callbacks.latent_scatter=null",
    "trainer.enable_progress_bar=false",
    "resume=auto",
)


@dataclass(frozen=True)
class Probe:
    """One probe run: a recipe at one (algorithm, Nz, step size)."""

    algorithm: str
    latent_dim: int
    lr: float

    @property
    def name(self) -> str:
        return f"{self.algorithm}_nz{self.latent_dim}_lr{self.lr:g}"


@dataclass(frozen=True)
class Score:
    """A probe's outcome: the training bound at the probe budget, or why there is none."""

    probe: Probe
    train_elbo: float  # -inf when diverged or missing
    note: str = ""


def recipe_grid(recipe: str) -> tuple[str, list[int], list[str]]:
    """(data name, Nz values, algorithms) of a Fig. 2 recipe, from its composed config."""
    from hydra import compose, initialize_config_dir

    from aevb.train import config_dir  # late: imports Lightning

    conf = Path(config_dir()) / "experiment"
    if not (conf / f"{recipe}.yaml").is_file():
        names = sorted(p.stem for p in conf.glob("paper_fig2_*.yaml"))
        raise StepSizeError(f"recipe must be one of {names}, got {recipe!r}")
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="step_size"):
        cfg = compose("train", [f"+experiment={recipe}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    if "model.latent_dim" not in params or "model.algorithm" not in params:
        raise StepSizeError(f"recipe {recipe} sweeps no model.latent_dim and model.algorithm")
    latents = [int(v) for v in str(params["model.latent_dim"]).split(",")]
    algorithms = [a.strip() for a in str(params["model.algorithm"]).split(",")]
    return str(cfg.data.name), latents, algorithms


def score(run_dir: Path, probe: Probe, samples: int) -> Score | None:
    """The probe's training bound at `samples`, or None if it has not finished."""
    metrics_file = RunDir(run_dir).metrics
    if not metrics_file.is_file():
        return None
    metrics = json.loads(metrics_file.read_text())
    if not isinstance(metrics, dict):
        raise StepSizeError(f"{metrics_file} is not a JSON object; move it away to re-run it")
    if metrics.get("status") == "diverged":
        step = metrics.get("diverged_step")
        return Score(probe, -math.inf, f"diverged at step {step} ({metrics.get('diverged_term')})")
    if metrics.get("status") != "completed" or int(metrics.get("samples_seen", 0)) < samples:
        return None
    points = json.loads(RunDir(run_dir).learning_curve.read_text())["points"]
    last = max(points, key=lambda p: p["samples"])
    value = float(last["train_elbo"])
    if not math.isfinite(value):
        return Score(probe, -math.inf, "non-finite training bound")
    return Score(probe, value)


def run_probe(
    recipe: str, probe: Probe, out: Path, samples: int, overrides: Sequence[str], threads: int
) -> Score:
    """Train one probe (skipped when already finished) and score it."""
    run_dir = out / probe.name
    done = score(run_dir, probe, samples)
    if done is not None:
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "aevb.train", f"+experiment={recipe}",
        f"model.algorithm={probe.algorithm}", f"model.latent_dim={probe.latent_dim}",
        f"optim.lr={probe.lr}", f"budget_samples={samples}", *PROBE_OVERRIDES, *overrides,
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with (run_dir / "probe.log").open("ab") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    result = score(run_dir, probe, samples)
    if result is None:
        raise StepSizeError(f"probe {probe.name} failed without a result; see {run_dir}/probe.log")
    return result


def select(scores: Sequence[Score]) -> dict[str, dict[int, float]]:
    """Best step size per (algorithm, Nz); ties go to the smaller step size."""
    best: dict[tuple[str, int], Score] = {}
    for s in sorted(scores, key=lambda s: s.probe.lr):
        key = (s.probe.algorithm, s.probe.latent_dim)
        if key not in best or s.train_elbo > best[key].train_elbo:
            best[key] = s
    chosen: dict[str, dict[int, float]] = {}
    for (algo, nz), s in sorted(best.items()):
        if not math.isfinite(s.train_elbo):
            raise StepSizeError(f"every step size diverged for {algo} Nz={nz}; widen --lrs")
        chosen.setdefault(algo, {})[nz] = s.probe.lr
    return chosen


def to_yaml(recipe: str, data: str, samples: int, chosen: dict[str, dict[int, float]]) -> str:
    """The generated recipe file: the chosen step size per algorithm and Nz."""
    lines = [
        "# @package _global_",
        f"# Generated by `aevb-step-size {recipe}` on {date.today().isoformat()}: the Adagrad step",
        "# size per algorithm and Nz from {"
        + ", ".join(f"{v:g}" for v in PAPER_STEP_SIZES)
        + "} with the best training lower bound",
        f"# after {samples:,} training samples (docs/reproduction.md). The recipe sets optim.lr",
        "# from it; an explicit optim.lr=... wins. Do not edit by hand: re-run the command.",
        "paper_step_size:",
        f"  probe_samples: {samples}",
    ]
    for algo, per_nz in chosen.items():
        lines.append(f"  {algo}:")
        lines += [f"    nz{nz}: {lr:g}" for nz, lr in sorted(per_nz.items())]
    return "\n".join(lines) + "\n"


def to_markdown(data: str, samples: int, scores: Sequence[Score], chosen: dict) -> str:
    """The selection table: training bound of every probe, the chosen one in bold."""
    lrs = sorted({s.probe.lr for s in scores})
    by = {(s.probe.algorithm, s.probe.latent_dim, s.probe.lr): s for s in scores}
    head = "| algorithm | Nz | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |"
    rows = [head, "|" + "---|" * (len(lrs) + 3)]
    for algo, per_nz in chosen.items():
        for nz, pick in sorted(per_nz.items()):
            cells = []
            for lr in lrs:
                s = by.get((algo, nz, lr))
                text = "—" if s is None else (
                    f"{s.train_elbo:.1f}" if math.isfinite(s.train_elbo) else s.note
                )  # fmt: skip
                cells.append(f"**{text}**" if lr == pick else text)
            rows.append(f"| {algo} | {nz} | " + " | ".join(cells) + f" | {pick:g} |")
    intro = (
        f"Training lower bound (nats per datapoint) after {samples:,} training samples, "
        f"{data}, per Adagrad step size; written by `aevb-step-size`."
    )
    return intro + "\n\n" + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="aevb-step-size", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a Fig. 2 recipe: paper_fig2_mnist or paper_fig2_frey")
    parser.add_argument(
        "overrides", nargs="*", help="aevb-train overrides for every probe, e.g. data.root=DIR"
    )
    parser.add_argument("--lrs", default=",".join(f"{v:g}" for v in PAPER_STEP_SIZES))
    parser.add_argument("--latent-dims", help="comma-separated Nz (default: the recipe's sweep)")
    parser.add_argument("--probe-samples", type=int, default=PROBE_SAMPLES)
    parser.add_argument("--out", default="outputs/step_size", help="probe run dirs go below")
    parser.add_argument("--jobs", type=int, default=2, help="probes at a time (one thread each)")
    parser.add_argument("--conf", default=None, help="where to write step_size_<data>.yaml")
    parser.add_argument("--table", default=None, help="where to write the markdown table")
    args = parser.parse_args(argv)
    try:
        data, latents, algorithms = recipe_grid(args.recipe)
        if args.latent_dims:
            latents = [int(v) for v in args.latent_dims.split(",")]
        lrs = [float(v) for v in args.lrs.split(",")]
        if args.probe_samples < 1 or args.jobs < 1 or not lrs or min(lrs) <= 0:
            raise StepSizeError("--probe-samples, --jobs must be >= 1 and --lrs positive numbers")
    except ValueError as err:
        parser.error(f"--lrs and --latent-dims must be comma-separated numbers ({err})")
    except StepSizeError as err:
        parser.error(str(err))
    probes = [Probe(a, nz, lr) for a in algorithms for nz in latents for lr in lrs]
    out = Path(args.out) / data
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            scores = list(pool.map(
                lambda p: run_probe(args.recipe, p, out, args.probe_samples, args.overrides,
                                    threads),
                probes,
            ))  # fmt: skip
        chosen = select(scores)
    except StepSizeError as err:
        print(f"aevb-step-size: error: {err}", file=sys.stderr)
        sys.exit(1)
    from aevb.train import config_dir

    conf = Path(args.conf or Path(config_dir()) / "experiment" / "paper" / f"step_size_{data}.yaml")
    table = Path(args.table or f"docs/reproduction/step_size_{data}.md")
    write_bytes_atomic(conf, to_yaml(args.recipe, data, args.probe_samples, chosen).encode())
    write_bytes_atomic(table, to_markdown(data, args.probe_samples, scores, chosen).encode())
    print(to_markdown(data, args.probe_samples, scores, chosen))
    print(f"wrote {conf} and {table}")


if __name__ == "__main__":
    main()
