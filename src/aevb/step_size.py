"""`aevb-step-size`: choose a recipe's Adagrad step size as the AEVB paper did (section 5).

    aevb-step-size paper_fig2_mnist data.root=../shared/data [--latent-dims 2,3,5,10,20,200]
    aevb-step-size paper_fig3 data.root=../shared/data

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

Fig. 3 (`paper_fig3`) sweeps N_train instead of Nz and compares AEVB, wake-sleep and MCEM, and
MCEM has no lower bound. Its "performance on the training set" is therefore the quantity Fig. 3
plots: the Appendix D estimate of log p(x) on the recipe's first `num_train` training points
(the last point of the probe's marginal_curve.json), for all three algorithms alike. It is
written per (algorithm, N_train) to `conf/experiment/paper/step_size_fig3.yaml`
(`paper_fig3_step_size`) and `docs/reproduction/step_size_fig3.md`.
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
from dataclasses import dataclass, replace
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


#: the key a recipe sweeps beside model.algorithm -> its label in probe names and tables
SWEPT_KEYS = {"model.latent_dim": "nz", "data.num_train": "n"}


@dataclass(frozen=True)
class Probe:
    """One probe run: a recipe at one (algorithm, swept value, step size); the swept value is
    Nz (Fig. 2) or N_train (Fig. 3, `key="data.num_train"`)."""

    algorithm: str
    value: int  # of `key`: Nz or N_train
    lr: float
    key: str = "model.latent_dim"

    @property
    def label(self) -> str:
        """`nz20`, `n1000`: the entry of the generated table."""
        return f"{SWEPT_KEYS[self.key]}{self.value}"

    @property
    def name(self) -> str:
        return f"{self.algorithm}_{self.label}_lr{self.lr:g}"

    @property
    def overrides(self) -> list[str]:
        return [f"model.algorithm={self.algorithm}", f"{self.key}={self.value}"]


@dataclass(frozen=True)
class Score:
    """A probe's outcome: the training bound at the probe budget, or why there is none."""

    probe: Probe
    train_elbo: float  # the training score (bound, or log p(x) estimate); -inf when diverged
    note: str = ""


#: recipes aevb-step-size knows: Fig. 2 (bound, per Nz) and Fig. 3 (log p(x), per N_train)
RECIPES = ("paper_fig2_mnist", "paper_fig2_frey", "paper_fig3")
#: settings of a Fig. 3 probe beyond the recipe: the Appendix D estimate at the start and at the
#: end only, on the first 200 training points (the same for every probe, so differences between
#: step sizes are paired; 1000 would take 5x longer), and one test point (unused)
MARGINAL_PROBE_OVERRIDES = (
    "callbacks.marginal_curve.num_train=200",
    "callbacks.marginal_curve.num_test=1",
)


@dataclass(frozen=True)
class Grid:
    """What a recipe sweeps: (algorithm, value of `key`) cells, and where the result goes."""

    data: str
    key: str  # model.latent_dim or data.num_train
    values: list[int]
    algorithms: list[str]
    marginal: bool  # scored by marginal_curve.json's train log p(x), not the training bound

    @property
    def table(self) -> str:
        """The generated recipe table's top-level key."""
        return "paper_fig3_step_size" if self.marginal else "paper_step_size"

    @property
    def stem(self) -> str:
        """`step_size_<data>` (Fig. 2) or `step_size_fig3`: the yaml and markdown file names."""
        return "step_size_fig3" if self.marginal else f"step_size_{self.data}"

    def probes(self, lrs: Sequence[float]) -> list[Probe]:
        return [
            Probe(a, v, lr, self.key) for a in self.algorithms for v in self.values for lr in lrs
        ]


def recipe_grid(recipe: str) -> Grid:
    """The swept cells of a paper recipe, from its composed config."""
    from hydra import compose, initialize_config_dir

    from aevb.train import config_dir  # late: imports Lightning

    if recipe not in RECIPES:
        raise StepSizeError(f"recipe must be one of {list(RECIPES)}, got {recipe!r}")
    with initialize_config_dir(config_dir(), version_base="1.3", job_name="step_size"):
        cfg = compose("train", [f"+experiment={recipe}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    key = next((k for k in SWEPT_KEYS if k in params), None)
    if key is None or "model.algorithm" not in params:
        raise StepSizeError(f"recipe {recipe} sweeps no {' or '.join(SWEPT_KEYS)}")
    values = [int(v) for v in str(params[key]).split(",")]
    algorithms = [a.strip() for a in str(params["model.algorithm"]).split(",")]
    marginal = cfg.get("callbacks", {}).get("marginal_curve") is not None
    return Grid(str(cfg.data.name), key, values, algorithms, marginal)


def score(run_dir: Path, probe: Probe, samples: int, marginal: bool = False) -> Score | None:
    """The probe's training bound (`marginal`: Appendix D log p(x) of the training points) at
    `samples`, or None if it has not finished."""
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
    curve = RunDir(run_dir).marginal_curve if marginal else RunDir(run_dir).learning_curve
    points = json.loads(curve.read_text())["points"]
    last = max(points, key=lambda p: p["samples"])
    value = float(last["train_log_px" if marginal else "train_elbo"])
    if not math.isfinite(value):
        what = "log p(x)" if marginal else "bound"
        return Score(probe, -math.inf, f"non-finite training {what}")
    return Score(probe, value)


def run_probe(
    recipe: str,
    probe: Probe,
    out: Path,
    samples: int,
    overrides: Sequence[str],
    threads: int,
    marginal: bool = False,
) -> Score:
    """Train one probe (skipped when already finished) and score it."""
    run_dir = out / probe.name
    done = score(run_dir, probe, samples, marginal)
    if done is not None:
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "aevb.train", f"+experiment={recipe}", *probe.overrides,
        f"optim.lr={probe.lr}", f"budget_samples={samples}", *PROBE_OVERRIDES,
        *(MARGINAL_PROBE_OVERRIDES if marginal else ()), *overrides, f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with (run_dir / "probe.log").open("ab") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    result = score(run_dir, probe, samples, marginal)
    if result is None:
        raise StepSizeError(f"probe {probe.name} failed without a result; see {run_dir}/probe.log")
    return result


def select(scores: Sequence[Score]) -> dict[str, dict[int, float]]:
    """Best step size per (algorithm, Nz or N_train); ties go to the smaller step size."""
    best: dict[tuple[str, int], Score] = {}
    for s in sorted(scores, key=lambda s: s.probe.lr):
        key = (s.probe.algorithm, s.probe.value)
        if key not in best or s.train_elbo > best[key].train_elbo:
            best[key] = s
    chosen: dict[str, dict[int, float]] = {}
    for (algo, nz), s in sorted(best.items()):
        if not math.isfinite(s.train_elbo):
            what = "Nz" if s.probe.key == "model.latent_dim" else s.probe.key
            raise StepSizeError(f"every step size diverged for {algo} {what}={nz}; widen --lrs")
        chosen.setdefault(algo, {})[nz] = s.probe.lr
    return chosen


def to_yaml(recipe: str, grid: Grid, samples: int, chosen: dict[str, dict[int, float]]) -> str:
    """The generated recipe file: the chosen step size per algorithm and Nz (or N_train)."""
    prefix = SWEPT_KEYS[grid.key]
    measure = (
        "Appendix D log p(x) of the training points" if grid.marginal else "training lower bound"
    )
    lines = [
        "# @package _global_",
        f"# Generated by `aevb-step-size {recipe}` on {date.today().isoformat()}: the Adagrad step",
        f"# size per algorithm and {'N_train' if prefix == 'n' else 'Nz'} from {{"
        + ", ".join(f"{v:g}" for v in PAPER_STEP_SIZES)
        + "} with the best",
        f"# {measure} after {samples:,} training samples (docs/reproduction.md).",
        "# The recipe sets optim.lr",
        "# from it; an explicit optim.lr=... wins. Do not edit by hand: re-run the command.",
        f"{grid.table}:",
        f"  probe_samples: {samples}",
    ]
    for algo, per_value in chosen.items():
        lines.append(f"  {algo}:")
        lines += [f"    {prefix}{v}: {lr:g}" for v, lr in sorted(per_value.items())]
    return "\n".join(lines) + "\n"


def to_markdown(grid: Grid, samples: int, scores: Sequence[Score], chosen: dict) -> str:
    """The selection table: training score of every probe, the chosen one in bold."""
    lrs = sorted({s.probe.lr for s in scores})
    by = {(s.probe.algorithm, s.probe.value, s.probe.lr): s for s in scores}
    column = "N_train" if grid.key == "data.num_train" else "Nz"
    head = f"| algorithm | {column} | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |"
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
    measure = (
        "Appendix D estimate of log p(x) of the recipe's training points"
        if grid.marginal
        else "Training lower bound"
    )
    intro = (
        f"{measure} (nats per datapoint) after {samples:,} training samples, "
        f"{grid.data}, per Adagrad step size; written by `aevb-step-size`."
    )
    return intro + "\n\n" + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="aevb-step-size", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a paper recipe: " + ", ".join(RECIPES))
    parser.add_argument(
        "overrides", nargs="*", help="aevb-train overrides for every probe, e.g. data.root=DIR"
    )
    parser.add_argument("--lrs", default=",".join(f"{v:g}" for v in PAPER_STEP_SIZES))
    parser.add_argument(
        "--latent-dims", help="comma-separated Nz or N_train (default: the recipe's sweep)"
    )
    parser.add_argument("--probe-samples", type=int, default=PROBE_SAMPLES)
    parser.add_argument("--out", default="outputs/step_size", help="probe run dirs go below")
    parser.add_argument("--jobs", type=int, default=2, help="probes at a time (one thread each)")
    parser.add_argument("--conf", default=None, help="where to write step_size_<data>.yaml")
    parser.add_argument("--table", default=None, help="where to write the markdown table")
    args = parser.parse_args(argv)
    try:
        grid = recipe_grid(args.recipe)
        if args.latent_dims:
            grid = replace(grid, values=[int(v) for v in args.latent_dims.split(",")])
        lrs = [float(v) for v in args.lrs.split(",")]
        if args.probe_samples < 1 or args.jobs < 1 or not lrs or min(lrs) <= 0:
            raise StepSizeError("--probe-samples, --jobs must be >= 1 and --lrs positive numbers")
    except ValueError as err:
        parser.error(f"--lrs and --latent-dims must be comma-separated numbers ({err})")
    except StepSizeError as err:
        parser.error(str(err))
    probes = grid.probes(lrs)
    out = Path(args.out) / (f"{grid.data}_fig3" if grid.marginal else grid.data)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            scores = list(pool.map(
                lambda p: run_probe(args.recipe, p, out, args.probe_samples, args.overrides,
                                    threads, grid.marginal),
                probes,
            ))  # fmt: skip
        chosen = select(scores)
    except StepSizeError as err:
        print(f"aevb-step-size: error: {err}", file=sys.stderr)
        sys.exit(1)
    from aevb.train import config_dir

    conf = Path(args.conf or Path(config_dir()) / "experiment" / "paper" / f"{grid.stem}.yaml")
    table = Path(args.table or f"docs/reproduction/{grid.stem}.md")
    markdown = to_markdown(grid, args.probe_samples, scores, chosen)
    write_bytes_atomic(conf, to_yaml(args.recipe, grid, args.probe_samples, chosen).encode())
    write_bytes_atomic(table, markdown.encode())
    print(markdown)
    print(f"wrote {conf} and {table}")


if __name__ == "__main__":
    main()
