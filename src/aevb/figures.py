"""`aevb-figures`: the AEVB paper's Figures 2, 3, 4 and 5 from finished `aevb-train` runs.

    aevb-figures outputs/paper_fig2_mnist/<time> outputs/paper_fig2_frey/<time> [--out DIR]

Every directory below the given ones that holds `.hydra/config.yaml` is a run. Figure 2 reads
only `learning_curve.json` (written by `aevb.learning_curve.LearningCurve`); Figures 4 and 5 need
the model, so they load each run's best checkpoint (`aevb.runs.load_run`):

- fig2_<data>: one panel per Nz, average lower bound per datapoint against training samples
  evaluated (log x), AEVB and wake-sleep, train solid and test dashed.
- fig3_<data>: one panel per training-set size, the Appendix D estimate of the marginal
  log-likelihood against training samples evaluated (linear x, millions), AEVB, wake-sleep and
  MCEM, train solid and test dashed (from `marginal_curve.json`, `aevb.marginal_curve`).
- fig4: the learned 2-D manifolds (AEVB runs with Nz = 2, one panel per dataset): decoder means
  at z = Phi^-1 of a regular grid on the unit square.
- fig5_<data>: random samples E[x|z], z ~ p(z), from the AEVB runs, one panel per Nz.

Each figure is written atomically as PNG and PDF into --out (default: figures/ in the first
directory, so a sweep's own summary.md is never overwritten),
with `figures.json` (what was drawn from which run) and `summary.md`: the last bounds per run,
AEVB against wake-sleep per Fig. 2 panel (`comparison_table`: the Fig. 2 caption's claims,
measured) and the Fig. 3 marginal likelihoods.
torch, Lightning and matplotlib are imported by the functions that draw or load a model, so
`--help` and a refused command line (a missing directory, no runs) answer without them.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from aevb.atomic import write_bytes_atomic, write_json_atomic
from aevb.errors import FiguresError, one_line
from aevb.rundir import RunDir

if TYPE_CHECKING:
    import torch

#: the paper's names and line colours of the two algorithms
ALGORITHM_LABELS = {"aevb": "AEVB", "wake_sleep": "Wake-Sleep", "mcem": "MCEM"}
ALGORITHM_COLORS = {"aevb": "tab:red", "wake_sleep": "tab:green", "mcem": "tab:blue"}
DATA_LABELS = {"mnist": "MNIST", "frey_face": "Frey Face", "fashion_mnist": "Fashion-MNIST"}
FIG5_LATENTS = (2, 5, 10, 20)


@dataclass
class RunInfo:
    """What the figures need of one run dir, read without loading the model."""

    path: Path
    data: str
    latent_dim: int
    algorithm: str
    curve: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: train/test bound of the model that ignores z, as the learning curve recorded it
    z_ignored: dict[str, float] | None = None
    #: data.num_train (None: the whole training split) and the Fig. 3 marginal-likelihood curve
    num_train: int | None = None
    marginal: list[dict[str, Any]] = field(default_factory=list)

    @property
    def has_checkpoint(self) -> bool:
        return RunDir(self.path).has_checkpoint()

    @property
    def samples(self) -> int:
        return int(self.curve[-1]["samples"]) if self.curve else 0


def read_run(path: Path) -> RunInfo | None:
    """A run's identity (data, Nz, algorithm), curve and metrics; None if not an aevb run."""
    run = RunDir(path)
    try:
        cfg = OmegaConf.load(run.config)
        info = RunInfo(
            path=path,
            data=str(cfg.data.name),
            latent_dim=int(cfg.model.latent_dim),
            algorithm=str(cfg.model.get("algorithm", "aevb")),
            num_train=cfg.data.get("num_train"),
        )
    except Exception:  # noqa: BLE001 -- not an aevb-train config: not a run for us
        return None
    curve_file = run.learning_curve
    if curve_file.is_file():
        try:
            curve = json.loads(curve_file.read_text())
            info.curve = sorted(curve["points"], key=_samples)
            info.z_ignored = curve.get("z_ignored")
        except (ValueError, KeyError, TypeError) as err:
            raise FiguresError(f"{curve_file} is unreadable ({err})") from err
    marginal_file = run.marginal_curve
    if marginal_file.is_file():
        try:
            info.marginal = sorted(json.loads(marginal_file.read_text())["points"], key=_samples)
        except (ValueError, KeyError, TypeError) as err:
            raise FiguresError(f"{marginal_file} is unreadable ({err})") from err
    metrics_file = run.metrics
    if metrics_file.is_file():
        try:
            info.metrics = json.loads(metrics_file.read_text())
        except ValueError:
            info.metrics = {}
        if not isinstance(info.metrics, dict):  # valid JSON, not an object: no metrics
            info.metrics = {}
    return info


def _samples(point: dict[str, Any]) -> int:
    return int(point["samples"])


def find_runs(dirs: Sequence[str | Path]) -> list[RunInfo]:
    """Every aevb run at or below `dirs` (sorted by path); FiguresError for a missing dir."""
    runs: list[RunInfo] = []
    seen: set[Path] = set()
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise FiguresError(f"{root} is not a directory")
        for run in RunDir.below(root):
            run_dir = run.path.resolve()
            if run_dir in seen:
                continue
            seen.add(run_dir)
            info = read_run(run_dir)
            if info is not None:
                runs.append(info)
    return runs


def _pick(runs: list[RunInfo]) -> dict[tuple[str, int, str], RunInfo]:
    """One run per (data, Nz, algorithm): the one whose curve reaches the most samples."""
    best: dict[tuple[str, int, str], RunInfo] = {}
    for r in runs:
        key = (r.data, r.latent_dim, r.algorithm)
        if key not in best or r.samples > best[key].samples:
            best[key] = r
    return best


def _pick_marginal(runs: list[RunInfo]) -> list[RunInfo]:
    """One Fig. 3 run per (data, N_train, algorithm): the one whose marginal-likelihood curve
    reaches the most samples (a run dir and its committed copy are one run)."""
    best: dict[tuple[str, int | None, str], RunInfo] = {}
    for r in runs:
        key = (r.data, r.num_train, r.algorithm)
        if r.marginal and (
            key not in best or r.marginal[-1]["samples"] > best[key].marginal[-1]["samples"]
        ):
            best[key] = r
    return list(best.values())


# ----- drawing ----------------------------------------------------------------------------------
def _new_figure(panels: int, width: float, height: float) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure  # late: slow import

    cols = panels
    fig = Figure(figsize=(width * cols, height), dpi=100)
    axes = [fig.add_subplot(1, cols, i + 1) for i in range(panels)]
    return fig, axes


def _save(fig: Any, out: Path, stem: str) -> list[Path]:
    """Write stem.png and stem.pdf atomically; returns the paths."""
    paths = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=100 if fmt == "png" else None, bbox_inches="tight")
        paths.append(write_bytes_atomic(out / f"{stem}.{fmt}", buf.getvalue()))
    return paths


#: --axes paper: the x and y ranges of the paper's Fig. 2 panels (docs/reproduction.md)
PAPER_AXES = {"mnist": ((1e5, 1e8), (-150.0, -100.0)), "frey_face": ((1e5, 1e8), (0.0, 1600.0))}
#: --axes paper: the paper's panels (MNIST Nz = 2 runs serve Figs. 4 and 5 only)
PAPER_PANELS = {"mnist": (3, 5, 10, 20, 200), "frey_face": (2, 5, 10, 20)}
#: --axes paper: Fig. 3's ranges per N_train (x in millions of samples; y from the tick labels,
#: 100-160 and 125-160 nats with the signs lost in extraction: ../shared/paper)
PAPER_AXES_FIG3 = {1000: ((0.0, 60.0), (-160.0, -100.0)), 50000: ((0.0, 60.0), (-160.0, -125.0))}
#: the y range below the zoomed part that gets its own strip (an axis break) instead of squashing
BREAK_FACTOR = 1.0


def _panel_axes(
    fig: Any,
    grid: Any,
    col: int,
    ranges: tuple[tuple[float, float], tuple[float, float]],
    fixed: tuple[float, float] | None = None,
) -> tuple[list[Any], tuple[float, float]]:
    """The axes of one panel in column `col` of a 2-row gridspec (4:1), their y limits set, and
    the panel's y range (unpadded).

    ranges = (full, zoom) from `_y_ranges`. With `fixed` (the paper's range) one axes spans both
    rows. Otherwise the panel shows every value: one axes from the lowest value up when the
    values below the zoom span at most BREAK_FACTOR times its height, else the zoom on top and a
    lower strip for the rest, below a marked break ([top, low], sharing x), the lower strip
    ending where the top one begins."""
    full, zoom = ranges
    broken = fixed is None and full[0] < zoom[0] - BREAK_FACTOR * (zoom[1] - zoom[0])
    top = fig.add_subplot(grid[0, col] if broken else grid[:, col])
    if not broken:
        y_range = fixed if fixed is not None else (full[0], zoom[1])
        top.set_ylim(*(y_range if fixed is not None else _padded(y_range)))
        return [top], y_range
    top.set_ylim(*_padded(zoom))
    low = fig.add_subplot(grid[1, col], sharex=top)
    low.set_ylim(full[0] - 0.05 * (zoom[0] - full[0]), top.get_ylim()[0])
    _mark_break(top, low)
    top.tick_params(axis="x", which="both", bottom=False, labelbottom=False)
    low.tick_params(axis="x", which="both", top=False)
    return [top, low], zoom


def figure2(
    runs: dict[tuple[str, int, str], RunInfo], data: str, out: Path, axes: str = "full"
) -> dict[str, Any]:
    """Fig. 2 for one dataset: a panel per Nz, train (solid) / test (dashed) lower bounds.

    axes="full" shows every curve whole: the y axis zooms on the best curves and, where other
    curves reach far below, a lower strip below a marked axis break shows the rest.
    axes="paper" uses the paper's ranges (PAPER_AXES) and may clip. A grey line marks the bound
    of the fitted model that ignores z (`Likelihood.z_ignored`) where the runs recorded it, and
    a run that has not completed is labelled partial in its panel.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter

    keys = sorted(k for k, r in runs.items() if k[0] == data and r.curve)
    paper = axes == "paper" and data in PAPER_AXES
    latents = sorted({k[1] for k in keys if not paper or k[1] in PAPER_PANELS[data]})
    fig = Figure(figsize=(3.2 * len(latents), 3.4), dpi=100)
    grid = fig.add_gridspec(2, len(latents), height_ratios=[4, 1], hspace=0.06)
    panels, labelled = [], {}
    for i, nz in enumerate(latents):
        panel_runs = {k[2]: runs[k] for k in keys if k[1] == nz}
        reference = next((r.z_ignored for r in panel_runs.values() if r.z_ignored), None)
        ranges = _y_ranges([r.curve for r in panel_runs.values()], ELBO_KEYS, reference)
        x_lim, fixed = PAPER_AXES[data] if paper else (None, None)
        strips, y_lim = _panel_axes(fig, grid, i, ranges, fixed)
        top, broken = strips[0], len(strips) > 1
        drawn, partial = [], []
        for algo, run in sorted(panel_runs.items()):
            x = [p["samples"] for p in run.curve]
            color = ALGORITHM_COLORS.get(algo, "tab:blue")
            label = ALGORITHM_LABELS.get(algo, algo)
            for key, style in (("train_elbo", "-"), ("test_elbo", "--")):
                split = "train" if key == "train_elbo" else "test"
                _plot(strips, x, [p[key] for p in run.curve], style, logx=True, color=color,
                      lw=1.2, label=f"{label} ({split})")  # fmt: skip
            if run.metrics.get("status") != "completed":
                partial.append(f"{label} at {run.samples:.1e}")
            drawn.append({"algorithm": algo, "run": str(run.path), "points": len(x),
                          "status": run_status(run)})  # fmt: skip
        if reference:
            for split, style in (("train", ":"), ("test", "-.")):
                for ax in strips:
                    lo, hi = ax.get_ylim()
                    if broken and not lo <= reference[split] <= hi:
                        continue  # only in its own strip, not along the other's edge
                    ax.axhline(reference[split], color="0.45", ls=style, lw=1.0,
                               label=f"z ignored ({split})")  # fmt: skip
        if partial:
            top.text(0.02, 0.98, "partial: " + "; ".join(partial), transform=top.transAxes,
                     fontsize=6, va="top")  # fmt: skip
        for ax in strips:
            ax.set_xscale("log")
            if x_lim is not None:
                ax.set_xlim(*x_lim)
            ax.xaxis.set_major_locator(LogLocator(base=10))
            ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only
            ax.tick_params(labelsize=7)
            ax.grid(True, which="major", alpha=0.3)
        strips[-1].set_xlabel("# training samples evaluated", fontsize=8)
        top.set_title(f"{DATA_LABELS.get(data, data)}, $N_z = {nz}$", fontsize=10)
        if i == 0:
            top.set_ylabel(r"$\mathcal{L}$ (nats per datapoint)", fontsize=8)
        for handle, label in zip(*top.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
        panels.append({"latent_dim": nz, "curves": drawn, "broken_axis": broken,
                       "y_range": list(y_lim), "z_ignored": reference})  # fmt: skip
    fig.axes[0].legend(labelled.values(), labelled.keys(), fontsize=6, loc="lower right")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.9, wspace=0.25)
    return {"files": [str(p) for p in _save(fig, out, f"fig2_{data}")], "panels": panels,
            "axes": axes}  # fmt: skip


def figure3(runs: list[RunInfo], data: str, out: Path, axes: str = "full") -> dict[str, Any]:
    """Fig. 3 for one dataset: a panel per training-set size, the Appendix D marginal
    log-likelihood of training (solid) and test (dashed) points against training samples
    evaluated (millions, linear), one colour per algorithm; the run of each (N_train,
    algorithm) that reached the most samples; a run that has not completed is labelled.

    axes="full" shows every point (`_trained_ranges`: the untrained model's first point, near
    -543 nats on MNIST, goes below an axis break when it would squash the rest); axes="paper"
    uses the paper's ranges (PAPER_AXES_FIG3) and may clip."""
    from matplotlib.figure import Figure

    best = {(r.num_train, r.algorithm): r for r in _pick_marginal(runs) if r.data == data}
    sizes = sorted({k[0] for k in best}, key=lambda n: math.inf if n is None else n)
    fig = Figure(figsize=(4.2 * len(sizes), 3.4), dpi=100)
    grid = fig.add_gridspec(2, len(sizes), height_ratios=[4, 1], hspace=0.06)
    panels, labelled = [], {}
    for i, size in enumerate(sizes):
        algos = sorted({k[1] for k in best if k[0] == size}, key=_algorithm_order)
        ranges = _trained_ranges([best[(size, a)].marginal for a in algos])
        x_lim, fixed = (
            PAPER_AXES_FIG3[size] if axes == "paper" and size in PAPER_AXES_FIG3 else (None, None)
        )
        strips, y_lim = _panel_axes(fig, grid, i, ranges, fixed)
        top = strips[0]
        drawn, partial = [], []
        for algo in algos:
            run = best[(size, algo)]
            x = [p["samples"] / 1e6 for p in run.marginal]
            color, label = ALGORITHM_COLORS.get(algo, "tab:gray"), ALGORITHM_LABELS.get(algo, algo)
            for split, style in (("train", "-"), ("test", "--")):
                values = [p[f"{split}_log_px"] for p in run.marginal]
                _plot(strips, x, values, style, color=color, lw=1.2, marker=".", ms=3,
                      label=f"{label} ({split})")  # fmt: skip
            if run.metrics.get("status") != "completed":
                partial.append(f"{label} at {run.marginal[-1]['samples'] / 1e6:.1f}M")
            drawn.append({"algorithm": algo, "run": str(run.path), "points": len(x),
                          "status": run_status(run)})  # fmt: skip
        if partial:
            top.text(0.02, 0.02, "partial: " + "; ".join(partial), transform=top.transAxes,
                     fontsize=6, va="bottom")  # fmt: skip
        name = "all" if size is None else f"{size}"
        top.set_title(f"{DATA_LABELS.get(data, data)}, $N_{{train}}$ = {name}", fontsize=10)
        strips[-1].set_xlabel("# training samples evaluated (millions)", fontsize=8)
        for ax in strips:
            ax.set_xlim(*(x_lim or (0, None)))
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
        if i == 0:
            top.set_ylabel("marginal log-likelihood (nats)", fontsize=8)
        for handle, label in zip(*top.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
        panels.append({"num_train": size, "curves": drawn, "broken_axis": len(strips) > 1,
                       "y_range": list(y_lim)})  # fmt: skip
    fig.axes[0].legend(labelled.values(), labelled.keys(), fontsize=6, loc="lower right")
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.14, top=0.9, wspace=0.2)
    return {"files": [str(p) for p in _save(fig, out, f"fig3_{data}")], "panels": panels,
            "axes": axes}  # fmt: skip


def _algorithm_order(algo: str) -> int:
    order = list(ALGORITHM_LABELS)
    return order.index(algo) if algo in order else len(order)


def marginal_table(runs: list[RunInfo]) -> str:
    """Markdown table of the Fig. 3 runs (one per data, N_train and algorithm, as drawn): the
    last point of each marginal-likelihood curve."""
    runs = _pick_marginal(runs)
    lines = [
        "| data | N_train | algorithm | samples | train log p(x) | test log p(x) | wall | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r.data, r.num_train or 0, _algorithm_order(r.algorithm))):
        last = r.marginal[-1]
        wall = last.get("wall_time_s")
        lines.append(
            f"| {DATA_LABELS.get(r.data, r.data)} | {r.num_train or 'all'} "
            f"| {ALGORITHM_LABELS.get(r.algorithm, r.algorithm)} | {last['samples']:.2e} "
            f"| {last['train_log_px']:.1f} | {last['test_log_px']:.1f} "
            f"| {f'{wall / 60:.1f} min' if isinstance(wall, int | float) else '-'} "
            f"| {run_status(r)} |"
        )
    return "\n".join(lines) + "\n"


#: the values Fig. 2 and Fig. 3 plot, (train, test)
ELBO_KEYS = ("train_elbo", "test_elbo")
LOG_PX_KEYS = ("train_log_px", "test_log_px")


def _values(points: list[dict[str, Any]], keys: tuple[str, str]) -> list[float]:
    """The finite train and test values of the points."""
    return [p[k] for p in points for k in keys if math.isfinite(p[k])]


def _y_ranges(
    curves: list[list[dict[str, Any]]],
    keys: tuple[str, str],
    reference: dict[str, float] | None = None,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(full, zoom) y ranges of a panel's curves (`keys`: the train and test value of a point).
    Full: every finite value. Zoom: the later two thirds of the best curve (highest final test
    value), the last point of every curve, the z-ignored bounds (`reference`; a run sitting on
    them is the point of the line) and everything above; a curve far below then gets the strip
    under an axis break."""
    every = [v for c in curves for v in _values(c, keys)]
    best = max(curves, key=lambda c: c[-1][keys[1]])
    zoom = _values(best[len(best) // 3 :] + [c[-1] for c in curves], keys)
    zoom += list(reference.values()) if reference else []
    full = (min(every), max(every))
    return full, (min(zoom), full[1])


def _trained_ranges(
    curves: list[list[dict[str, Any]]],
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(full, zoom) y ranges of a Fig. 3 panel: zoom on every point after training started
    (samples > 0), so each algorithm's whole curve stays in view however slowly it rises; only
    the untrained model's points can fall below the break."""
    every = [v for c in curves for v in _values(c, LOG_PX_KEYS)]
    trained = [v for c in curves for v in _values([p for p in c if p["samples"] > 0], LOG_PX_KEYS)]
    trained = trained or every
    return (min(every), max(every)), (min(trained), max(every))


def _padded(limits: tuple[float, float]) -> tuple[float, float]:
    lo, hi = limits
    pad = 0.05 * (hi - lo) + 1.0
    return lo - pad, hi + pad


def _within(
    x: Sequence[float], y: Sequence[float], lo: float, hi: float, logx: bool = False
) -> tuple[list[float], list[float], list[int]]:
    """The polyline (x, y) cut to lo <= y <= hi, and the indices of its own points kept.

    A segment that crosses a limit ends (or starts) at its crossing point (interpolated in log x
    on a log axis) and NaN breaks the line outside. Drawn so, a curve that runs just outside a
    strip of a broken axis is not painted along the strip's edge, as clipping alone leaves it
    (within a line width of the edge, a whole curve of the other strip looked like a plateau)."""
    xs: list[float] = []
    ys: list[float] = []
    kept: list[int] = []

    def add(xv: float, yv: float, own: bool) -> None:
        inside = lo <= yv <= hi
        if own and inside:
            kept.append(len(xs))
        xs.append(xv)
        ys.append(yv if inside else math.nan)

    points = list(zip(x, y, strict=True))
    for i, (x1, y1) in enumerate(points):
        x0, y0 = points[i - 1] if i else (x1, math.nan)
        if math.isfinite(y0) and math.isfinite(y1):
            cuts = sorted(((lim - y0) / (y1 - y0), lim) for lim in (lo, hi)
                          if (y0 - lim) * (y1 - lim) < 0)  # fmt: skip
            log = logx and x0 > 0 and x1 > 0
            for t, lim in cuts:
                add(x0 * (x1 / x0) ** t if log else x0 + t * (x1 - x0), lim, own=False)
        add(x1, y1, own=True)
    return xs, ys, kept


def _plot(strips: list[Any], x: Sequence[float], y: Sequence[float], *args: Any,
          logx: bool = False, **kwargs: Any) -> None:  # fmt: skip
    """ax.plot on every strip of a panel; on a broken axis each strip draws only its own range
    (`_within`; markers only on the curve's own points) within the limits `_panel_axes` set."""
    if len(strips) == 1:
        strips[0].plot(x, y, *args, **kwargs)
        return
    for ax in strips:
        xs, ys, kept = _within(x, y, *ax.get_ylim(), logx=logx)
        ax.plot(xs, ys, *args, markevery=kept, **kwargs)


def _mark_break(top: Any, low: Any) -> None:
    """Hide the facing spines of the two strips and draw the usual diagonal break marks."""
    top.spines["bottom"].set_visible(False)
    low.spines["top"].set_visible(False)
    kw = {"marker": [(-1, -0.5), (1, 0.5)], "markersize": 8, "linestyle": "none",
          "color": "k", "mec": "k", "mew": 1, "clip_on": False}  # fmt: skip
    top.plot([0, 1], [0, 0], transform=top.transAxes, **kw)
    low.plot([0, 1], [1, 1], transform=low.transAxes, **kw)


def _load_model(run: RunInfo) -> Any:
    from aevb.runs import load_run  # late: imports Lightning and the model classes

    return load_run(run.path).model


def _image_grid(images: torch.Tensor, nrow: int) -> Any:
    """[N, 1, H, W] in [0, 1] -> one 2-D numpy array (1-pixel white gaps)."""
    from torchvision.utils import make_grid

    grid = make_grid(images.clamp(0, 1).cpu(), nrow=nrow, padding=1, pad_value=1.0)
    return grid[0].numpy()


def manifold_images(model: Any, steps: int) -> torch.Tensor:
    """Decoder means on a steps x steps grid z = Phi^-1(u), u evenly spaced in (0, 1)^2
    (the paper's Fig. 4): columns z_1 increasing, rows z_2 decreasing."""
    import torch

    from aevb.vae import manifold_grid  # late: imports torch and Lightning

    with torch.no_grad():
        return model.decode_mean(manifold_grid(steps))


def _native_size(grids: list[Any], title_in: float = 0.4) -> tuple[float, float]:
    """Inches per panel that show each image pixel as one screen pixel at 100 dpi."""
    height = max(g.shape[0] for g in grids) / 100 + title_in
    width = max(g.shape[1] for g in grids) / 100
    return width, height


def figure4(runs: list[RunInfo], out: Path, steps: int = 16) -> dict[str, Any]:
    """Fig. 4: one manifold panel per dataset (steps x steps decoded grid points)."""
    grids = [_image_grid(manifold_images(_load_model(run), steps), steps) for run in runs]
    titles = [f"{DATA_LABELS.get(run.data, run.data)}, $N_z = 2$" for run in runs]
    panels = [{"data": run.data, "run": str(run.path), "grid": [steps, steps]} for run in runs]
    return _image_figure(grids, titles, panels, out, "fig4")


def figure5(runs: list[RunInfo], data: str, out: Path, n: int = 10, seed: int = 0) -> dict:
    """Fig. 5: an n x n grid of samples E[x|z], z ~ N(0, I), per Nz (fixed noise seed)."""
    import torch

    grids = []
    for run in runs:
        g = torch.Generator().manual_seed(seed)
        grids.append(_image_grid(_load_model(run).sample(n * n, generator=g), n))
    titles = [f"$N_z = {run.latent_dim}$" for run in runs]
    panels = [{"latent_dim": run.latent_dim, "run": str(run.path)} for run in runs]
    return _image_figure(grids, titles, panels, out, f"fig5_{data}")


def _image_figure(
    grids: list[Any], titles: list[str], panels: list[dict], out: Path, name: str
) -> dict[str, Any]:
    """One row of grayscale image grids at their native size, titled; the figure's record."""
    fig, axes = _new_figure(len(grids), *_native_size(grids))
    for ax, grid, title in zip(axes, grids, titles, strict=True):
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return {"files": [str(p) for p in _save(fig, out, name)], "panels": panels}


# ----- summary ----------------------------------------------------------------------------------
def summary_table(runs: dict[tuple[str, int, str], RunInfo]) -> str:
    """Markdown table per run, every number from the final weights: the last curve point
    (samples, train/test lower bound), the importance-weighted test NLL of the same weights
    (metrics.json's `test_final/nll` when the best checkpoint differs from the final weights,
    else `test/nll`), the wall time (the longer of metrics.json's, which covers the last session
    only, and the curve's, which adds up resumed sessions) and the status (`running` while there
    is no metrics.json, `resumed` after an interruption: `run_status`)."""
    plateau = any(r.z_ignored for r in runs.values())  # a column only where it was recorded
    lines = [
        "| data | Nz | algorithm | samples | train L | test L | test NLL (IW) | wall | status |"
        + (" on the z-ignored bound |" if plateau else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if plateau else ""),
    ]
    for (data, nz, algo), run in sorted(runs.items()):
        if not run.curve:
            continue
        on = z_ignored_span(run)
        stay = "never" if on is None else f"{on[0]:.1e}–{on[1]:.1e}"
        last = run.curve[-1]
        m = run.metrics
        nll = m.get("test_final/nll", m.get("test/nll") if m.get("final_is_best", True) else None)
        walls = [w for w in (m.get("wall_time_s"), last.get("wall_time_s")) if w]
        wall = max(walls) if walls else None
        lines.append(
            f"| {DATA_LABELS.get(data, data)} | {nz} | {ALGORITHM_LABELS.get(algo, algo)} "
            f"| {last['samples']:.2e} | {last['train_elbo']:.1f} | {last['test_elbo']:.1f} "
            f"| {f'{nll:.1f}' if isinstance(nll, float) else '-'} "
            f"| {f'{wall / 60:.1f} min' if isinstance(wall, int | float) else '-'} "
            f"| {run_status(run)} |" + (f" {stay if run.z_ignored else '-'} |" if plateau else "")
        )
    return "\n".join(lines) + "\n"


def _first_reaching(curve: list[dict[str, Any]], target: float, upto: int) -> int | None:
    """Samples at the first curve point (at most `upto`) whose test bound is >= target."""
    for p in curve:
        if p["samples"] > upto:
            return None
        if p["test_elbo"] >= target:
            return int(p["samples"])
    return None


def comparison_table(runs: dict[tuple[str, int, str], RunInfo]) -> str:
    """Markdown table per Fig. 2 panel with both algorithms: the paper's claims, measured.

    Both runs are compared at the largest training-sample count that is a point of both curves
    (the recipes share the log-spaced grid), so an unfinished run is compared with the other at
    its own length and the row says `partial`. Columns: the train and test bound of each
    (claim: AEVB reaches a better bound), the test-bound difference and at how many common
    points AEVB's is the higher, the samples each algorithm needs for its test bound to first
    reach wake-sleep's at the comparison point (claim: AEVB converges faster; resolution: the
    curve's grid) and the train minus test bound of each (claim: more latent variables do not
    overfit more). `final` only when both runs completed and the point is both curves' last.
    """
    head = (
        "| data | Nz | compared at (samples) | train L: AEVB / WS | test L: AEVB / WS "
        "| test L, AEVB − WS | AEVB ahead (test, common points) "
        "| samples to reach WS's test L: AEVB / WS | train − test: AEVB / WS | status |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    panels = sorted({(d, nz) for d, nz, _ in runs})
    for data, nz in panels:
        a, w = runs.get((data, nz, "aevb")), runs.get((data, nz, "wake_sleep"))
        if a is None or w is None or not a.curve or not w.curve:
            continue
        ws_at = {p["samples"]: p for p in w.curve}
        common = [(p, ws_at[p["samples"]]) for p in a.curve if p["samples"] in ws_at]
        if not common:
            continue
        pa, pw = common[-1]
        at = int(pa["samples"])
        target = pw["test_elbo"]
        reach_a = _first_reaching(a.curve, target, at)
        reach_w = _first_reaching(w.curve, target, at)
        if reach_a is None:
            reach = f"not reached / {reach_w:.1e}"
        else:
            reach = f"{reach_a:.1e} / {reach_w:.1e} ({reach_w / reach_a:.3g}×)"
        ahead = sum(p["test_elbo"] > q["test_elbo"] for p, q in common)
        final = (
            all(r.metrics.get("status") == "completed" for r in (a, w))
            and pa is a.curve[-1]
            and pw is w.curve[-1]
        )
        gaps = [p["train_elbo"] - p["test_elbo"] for p in (pa, pw)]
        lines.append(
            f"| {DATA_LABELS.get(data, data)} | {nz} | {at:.2e} "
            f"| {pa['train_elbo']:.1f} / {pw['train_elbo']:.1f} "
            f"| {pa['test_elbo']:.1f} / {pw['test_elbo']:.1f} "
            f"| {pa['test_elbo'] - pw['test_elbo']:+.1f} | {ahead} of {len(common)} | {reach} "
            f"| {gaps[0]:.1f} / {gaps[1]:.1f} | {'final' if final else 'partial'} |"
        )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def run_status(run: RunInfo) -> str:
    """metrics.json's status; `running` without one; `resumed` when the run was interrupted and
    its learning or marginal-likelihood curve has since gone past the step of the checkpoint it
    stopped at (the metrics.json of the interruption is the last one a run still training has
    written)."""
    m = run.metrics
    status = str(m.get("status", "running"))
    stopped_at = m.get("last_checkpoint_step")
    steps = [int(c[-1].get("step", -1)) for c in (run.curve, run.marginal) if c]
    last_step = max(steps, default=-1)
    if status == "interrupted" and isinstance(stopped_at, int) and last_step > stopped_at:
        return "resumed"
    return status


#: how close (nats) the training bound must be to the z-ignored model's to count as sitting on it
Z_IGNORED_TOLERANCE = 1.0


def z_ignored_span(run: RunInfo) -> tuple[int, int] | None:
    """First and last curve points of the longest stretch where the training bound is within
    Z_IGNORED_TOLERANCE of the bound of the fitted model that ignores z; None if never."""
    if not run.z_ignored:
        return None
    ref, best, start = run.z_ignored["train"], None, None
    for i, p in enumerate(run.curve + [None]):
        if p is not None and abs(p["train_elbo"] - ref) <= Z_IGNORED_TOLERANCE:
            start = i if start is None else start
        elif start is not None:
            span = (run.curve[start]["samples"], run.curve[i - 1]["samples"])
            if best is None or span[1] / span[0] > best[1] / best[0]:
                best = span
            start = None
    return best


def make_figures(
    dirs: Sequence[str | Path],
    out: str | Path | None = None,
    samples_seed: int = 0,
    axes: str = "full",
) -> dict[str, Any]:
    """Draw every figure the runs under `dirs` allow; returns the figures.json manifest."""
    runs = find_runs(dirs)
    picked = _pick(runs)
    with_curve = {k: r for k, r in picked.items() if r.curve}
    fig4_runs = [
        r
        for (d, nz, algo), r in sorted(picked.items(), key=lambda kv: kv[0][0] != "frey_face")
        if nz == 2 and algo == "aevb" and r.has_checkpoint
    ]
    fig5_runs: dict[str, list[RunInfo]] = {}
    for (d, nz, algo), r in sorted(picked.items()):
        if algo == "aevb" and nz in FIG5_LATENTS and r.has_checkpoint:
            fig5_runs.setdefault(d, []).append(r)
    fig3_runs = [r for r in runs if r.marginal]
    if not with_curve and not fig4_runs and not fig5_runs and not fig3_runs:
        where = ", ".join(str(d) for d in dirs)
        raise FiguresError(
            f"no aevb-train runs with {RunDir.LEARNING_CURVE}, {RunDir.MARGINAL_CURVE} or "
            f"checkpoints under {where} "
            f"({len(runs)} run dirs found); train with +experiment=paper_fig2_mnist or similar"
        )
    # default: <first dir>/figures, beside (never over) a sweep's summary.md or a run's files
    out = Path(out) if out is not None else RunDir(Path(dirs[0])).figures
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"runs": [str(r.path) for r in runs], "figures": {}}
    for data in sorted({k[0] for k in with_curve}):
        manifest["figures"][f"fig2_{data}"] = figure2(with_curve, data, out, axes)
    for data in sorted({r.data for r in fig3_runs}):
        manifest["figures"][f"fig3_{data}"] = figure3(fig3_runs, data, out, axes)
    if fig4_runs:
        manifest["figures"]["fig4"] = figure4(fig4_runs, out)
    for data, rs in sorted(fig5_runs.items()):
        manifest["figures"][f"fig5_{data}"] = figure5(rs, data, out, seed=samples_seed)
    summary = summary_table(with_curve) if with_curve else ""
    comparison = comparison_table(with_curve)
    if comparison:
        summary += "\n" + comparison
    if fig3_runs:
        summary += ("\n" if summary else "") + marginal_table(fig3_runs)
    write_bytes_atomic(out / "summary.md", summary.encode())
    write_json_atomic(out / "figures.json", manifest)
    manifest["summary"] = summary
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    """Console script entry point (`aevb-figures`)."""
    parser = argparse.ArgumentParser(
        prog="aevb-figures",
        description="Draw the AEVB paper's Figures 2-5 from aevb-train run directories.",
    )
    parser.add_argument("dirs", nargs="+", help="run or multirun directories (searched below)")
    parser.add_argument(
        "--out", default=None, help="output folder (default: figures/ in the first dir)"
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the Fig. 5 samples")
    parser.add_argument(
        "--axes",
        choices=("full", "paper"),
        default="full",
        help="Fig. 2 and 3 ranges: every curve whole (axis break where needed) or the paper's",
    )
    args = parser.parse_args(argv)
    try:
        manifest = make_figures(args.dirs, args.out, samples_seed=args.seed, axes=args.axes)
    except (FiguresError, FileNotFoundError, ValueError) as err:
        print(f"aevb-figures: error: {one_line(err, limit=None)}", file=sys.stderr)
        sys.exit(2)
    for name, info in manifest["figures"].items():
        print(f"{name}: {len(info['panels'])} panels -> {', '.join(info['files'])}")
    print(manifest["summary"], end="")


if __name__ == "__main__":
    main()
