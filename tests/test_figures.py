"""`aevb-figures` on a tiny real multirun (Frey Face recipe, AEVB and wake-sleep, Nz 2 and 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aevb.figures import FiguresError, RunInfo, find_runs, make_figures, summary_table
from aevb.runs import load_run
from aevb.wake_sleep import WakeSleep

from .conftest import check_light_answer, run_cli
from .test_frey_face import write_frey_mat

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 jobs: Nz in {2, 5} x {aevb, wake_sleep}, 400 training samples each."""
    tmp = tmp_path_factory.mktemp("figs")
    write_frey_mat(tmp / "data", n=240)
    sweep = tmp / "sweep"
    args = [
        "-m",
        "+experiment=paper_fig2_frey",
        f"data.root={tmp / 'data'}",
        "data.download=false",
        "data.val_size=20",
        "data.batch_size=20",
        "model.hidden_dims=[16]",
        "model.latent_dim=2,5",
        "model.algorithm=aevb,wake_sleep",
        "budget_samples=400",
        "callbacks.learning_curve.start=20",
        "callbacks.learning_curve.points_per_decade=2",
        "trainer=cpu",
        "trainer.check_val_every_n_epoch=1",
        "trainer.enable_progress_bar=false",
        "eval.iw_samples=0",
        "eval.iwae_ks=[]",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_cli(args, tmp, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def test_cli_writes_paper_figures_with_expected_panels(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    proc = run_cli([str(sweep), "--out", str(out)], tmp_path, script="aevb.figures", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "figures.json").read_text())
    figures = manifest["figures"]
    assert sorted(figures) == ["fig2_frey_face", "fig4", "fig5_frey_face"]
    fig2 = figures["fig2_frey_face"]["panels"]
    assert [p["latent_dim"] for p in fig2] == [2, 5]  # one panel per Nz
    for panel in fig2:  # AEVB and wake-sleep in every panel, with the whole curve
        assert sorted(c["algorithm"] for c in panel["curves"]) == ["aevb", "wake_sleep"]
        assert all(c["points"] == 4 for c in panel["curves"])  # 20, 80, 200 and the end, 400
    assert [p["data"] for p in figures["fig4"]["panels"]] == ["frey_face"]  # Nz = 2 AEVB only
    assert [p["latent_dim"] for p in figures["fig5_frey_face"]["panels"]] == [2, 5]
    for stem in ("fig2_frey_face", "fig4", "fig5_frey_face"):
        png, pdf = (out / f"{stem}.png").read_bytes(), (out / f"{stem}.pdf").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 2000
        assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    runs, panels = (out / "summary.md").read_text().split("\n\n")
    assert runs.count("| Frey Face |") == 4 and "Wake-Sleep" in runs  # one row per run
    assert panels.count("| Frey Face |") == 2 and "| final |" in panels  # one per Nz, both done
    assert "fig2_frey_face: 2 panels" in proc.stdout


def test_curves_come_from_learning_curve_json(sweep: Path) -> None:
    runs = find_runs([sweep])
    assert len(runs) == 4
    assert {(r.latent_dim, r.algorithm) for r in runs} == {
        (2, "aevb"), (2, "wake_sleep"), (5, "aevb"), (5, "wake_sleep")
    }  # fmt: skip
    for r in runs:
        # grid 20 * 10^(k/2) = 20, 63, 200, 632 seen at batch ends (multiples of 20), then the end
        assert [p["samples"] for p in r.curve] == [20, 80, 200, 400]
        assert r.curve[-1]["samples"] == 400 and r.has_checkpoint
    ws = next(r for r in runs if r.algorithm == "wake_sleep")
    assert isinstance(load_run(ws.path).model, WakeSleep)  # aevb-eval/load_run know the class
    table = summary_table({(r.data, r.latent_dim, r.algorithm): r for r in runs})
    assert table.splitlines()[2].startswith("| Frey Face | 2 | AEVB | 4.00e+02 |")
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    status = header.index("status")
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines()[2:]]
    assert [row[status] for row in rows] == ["completed"] * 4


def test_summary_wall_time_counts_resumed_sessions(tmp_path: Path) -> None:
    point = {"samples": 1000, "train_elbo": -150.0, "test_elbo": -151.0}
    resumed = RunInfo(tmp_path, "mnist", 3, "aevb", [{**point, "wall_time_s": 1200.0}])
    resumed.metrics = {"status": "completed", "wall_time_s": 600.0}  # the last session only
    fresh = RunInfo(tmp_path, "mnist", 5, "aevb", [{**point, "wall_time_s": 500.0}])
    fresh.metrics = {"status": "completed", "wall_time_s": 540.0}  # fit + final test
    lines = summary_table({("mnist", 3, "aevb"): resumed, ("mnist", 5, "aevb"): fresh})
    assert "| 20.0 min | completed |" in lines.splitlines()[2]
    assert "| 9.0 min | completed |" in lines.splitlines()[3]


def test_refuses_a_directory_without_runs(tmp_path: Path) -> None:
    (tmp_path / "empty" / "not_a_run").mkdir(parents=True)
    proc = run_cli([str(tmp_path / "empty")], tmp_path, script="aevb.figures", timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("aevb-figures: error: no aevb-train runs with learning_curve.json")
    assert len(err.splitlines()) == 1
    with pytest.raises(FiguresError, match="is not a directory"):
        make_figures([tmp_path / "missing"])


def _curve(values: list[float], offset: float = 1.0) -> list[dict]:
    return [{"samples": 10 ** (3 + i), "train_elbo": v + offset, "test_elbo": v}
            for i, v in enumerate(values)]  # fmt: skip


def test_fig2_shows_every_curve_whole_with_an_axis_break(tmp_path: Path) -> None:
    from aevb.figures import figure2

    ref = {"train": 576.0, "test": 580.0}
    aevb = RunInfo(
        tmp_path / "a", "frey_face", 2, "aevb", _curve([500, 700, 800, 840]), z_ignored=ref
    )
    aevb.metrics = {"status": "completed"}
    ws = RunInfo(tmp_path / "w", "frey_face", 2, "wake_sleep", _curve([-9000, 560, 575, 576]))
    ws.metrics = {"status": "completed"}
    close = RunInfo(tmp_path / "c", "frey_face", 5, "aevb", _curve([600, 700, 800]))  # running
    runs = {("frey_face", 2, "aevb"): aevb, ("frey_face", 2, "wake_sleep"): ws,
            ("frey_face", 5, "aevb"): close}  # fmt: skip
    info = figure2(runs, "frey_face", tmp_path)
    two, five = info["panels"]
    assert two["broken_axis"] and not five["broken_axis"]  # -9000 gets the strip below a break
    assert two["z_ignored"] == ref and five["z_ignored"] is None
    assert five["y_range"][0] <= 601 and five["curves"][0]["status"] == "running"
    paper = figure2(runs, "frey_face", tmp_path, axes="paper")
    assert [p["y_range"] for p in paper["panels"]] == [[0.0, 1600.0], [0.0, 1600.0]]
    assert not any(p["broken_axis"] for p in paper["panels"])
    assert (tmp_path / "fig2_frey_face.png").read_bytes().startswith(PNG_MAGIC)


def test_fig2_keeps_the_z_ignored_bound_in_view_when_curves_rise_far_above_it(
    tmp_path: Path,
) -> None:
    """Frey Face Nz = 20: AEVB ends near 1350, wake-sleep sat on the z-ignored bound (576) and
    the zoom on the best curve used to start at 800, hiding the line and the plateau."""
    from aevb.figures import figure2

    ref = {"train": 576.0, "test": 580.0}
    aevb = RunInfo(tmp_path / "a", "frey_face", 20, "aevb", _curve([300, 800, 900, 1200, 1350]),
                   z_ignored=ref)  # fmt: skip
    ws = RunInfo(tmp_path / "w", "frey_face", 20, "wake_sleep",
                 _curve([-900, 400, 576, 576, 700, 990], 0.0), z_ignored=ref)  # fmt: skip
    info = figure2({("frey_face", 20, "aevb"): aevb, ("frey_face", 20, "wake_sleep"): ws},
                   "frey_face", tmp_path)  # fmt: skip
    (panel,) = info["panels"]
    assert panel["broken_axis"]  # -900 still goes below a break
    low, high = panel["y_range"]
    assert low <= 576.0 and high >= 1351.0  # the line and the plateau in the upper strip


def test_summary_takes_bound_and_nll_from_the_final_weights(tmp_path: Path) -> None:
    curve = [{"samples": 1000, "train_elbo": -150.0, "test_elbo": -151.0}]
    later = RunInfo(tmp_path, "mnist", 3, "aevb", curve)  # best checkpoint earlier than the end
    later.metrics = {"status": "completed", "final_is_best": False, "test/nll": 140.0,
                     "test_final/nll": 149.0}  # fmt: skip
    best = RunInfo(tmp_path, "mnist", 5, "aevb", curve)
    best.metrics = {"status": "completed", "final_is_best": True, "test/nll": 148.0}
    untested = RunInfo(tmp_path, "mnist", 10, "aevb", curve)
    untested.metrics = {"status": "completed", "final_is_best": False, "test/nll": 140.0}
    rows = summary_table({("mnist", 3, "aevb"): later, ("mnist", 5, "aevb"): best,
                          ("mnist", 10, "aevb"): untested}).splitlines()[2:]  # fmt: skip
    assert "| -150.0 | -151.0 | 149.0 |" in rows[0]
    assert "| -150.0 | -151.0 | 148.0 |" in rows[1]
    assert "| -150.0 | -151.0 | - |" in rows[2]  # never the best checkpoint's NLL beside L


def test_summary_says_resumed_for_a_run_past_its_interruption(tmp_path: Path) -> None:
    """A resumed run keeps the metrics.json of its interruption until it ends."""
    stopped = {"status": "interrupted", "last_checkpoint_step": 500}
    curve = [{"samples": 10**4, "step": 100, "train_elbo": -150.0, "test_elbo": -151.0}]
    waiting = RunInfo(tmp_path, "mnist", 3, "aevb", list(curve))
    waiting.metrics = dict(stopped)
    resumed = RunInfo(tmp_path, "mnist", 5, "aevb", curve + [{**curve[0], "step": 501}])
    resumed.metrics = dict(stopped)
    rows = summary_table({("mnist", 3, "aevb"): waiting, ("mnist", 5, "aevb"): resumed})
    assert [r.split("|")[-2].strip() for r in rows.splitlines()[2:]] == ["interrupted", "resumed"]
    from aevb.figures import marginal_table  # a Fig. 3 run: its marginal curve says so

    fig3 = RunInfo(tmp_path, "mnist", 3, "mcem", num_train=1000)
    fig3.marginal = [{"samples": 10**6, "step": 600, "train_log_px": -150.0, "test_log_px": -155.0}]
    fig3.metrics = dict(stopped)
    assert marginal_table([fig3]).splitlines()[2].endswith("| resumed |")


def test_summary_says_how_long_a_run_sat_on_the_z_ignored_bound(tmp_path: Path) -> None:
    from aevb.figures import z_ignored_span

    ref = {"train": 576.0, "test": 580.0}
    values = [300.0, 575.5, 576.4, 575.9, 600.0, 576.0, 700.0]  # 1e4..1e6 on it, then once more
    ws = RunInfo(tmp_path, "frey_face", 2, "wake_sleep", _curve(values, offset=0.0), z_ignored=ref)
    assert z_ignored_span(ws) == (10**4, 10**6)
    aevb = RunInfo(tmp_path, "frey_face", 2, "aevb", _curve([300.0, 700.0]), z_ignored=ref)
    assert z_ignored_span(aevb) is None
    rows = summary_table({("frey_face", 2, "aevb"): aevb, ("frey_face", 2, "wake_sleep"): ws})
    assert rows.splitlines()[0].endswith("| on the z-ignored bound |")
    assert rows.splitlines()[2].endswith("| never |")
    assert rows.splitlines()[3].endswith("| 1.0e+04–1.0e+06 |")


def test_comparison_measures_the_fig2_claims_at_the_last_common_point(tmp_path: Path) -> None:
    from aevb.figures import comparison_table

    # grid 1e3..1e6; wake-sleep stopped at 1e5 (partial); AEVB passes its 1e5 test bound at 1e4
    aevb = RunInfo(tmp_path / "a", "mnist", 3, "aevb", _curve([-200, -130, -120, -110], 2.0))
    aevb.metrics = {"status": "completed"}
    ws = RunInfo(tmp_path / "w", "mnist", 3, "wake_sleep", _curve([-190, -170, -140], 5.0))
    alone = RunInfo(tmp_path / "z", "mnist", 5, "aevb", _curve([-200, -150]))  # no partner
    runs = {("mnist", 3, "aevb"): aevb, ("mnist", 3, "wake_sleep"): ws,
            ("mnist", 5, "aevb"): alone}  # fmt: skip
    rows = comparison_table(runs).splitlines()
    assert len(rows) == 3  # header, rule, one panel
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells == ["MNIST", "3", "1.00e+05", "-118.0 / -135.0", "-120.0 / -140.0", "+20.0",
                     "2 of 3", "1.0e+04 / 1.0e+05 (10×)", "2.0 / 5.0", "partial"]  # fmt: skip
    ws.curve += _curve([-190, -170, -140, -130], 5.0)[3:]
    ws.metrics = {"status": "completed"}
    cells = [c.strip() for c in comparison_table(runs).splitlines()[2].strip("|").split("|")]
    assert cells[2] == "1.00e+06" and cells[-1] == "final" and cells[6] == "3 of 4"
    behind = RunInfo(tmp_path / "b", "mnist", 3, "aevb", _curve([-300, -250, -220, -210], 2.0))
    cells = comparison_table({**runs, ("mnist", 3, "aevb"): behind}).splitlines()[2].split("|")
    assert cells[8].strip() == "not reached / 1.0e+06" and cells[-2].strip() == "partial"
    assert comparison_table({("mnist", 5, "aevb"): alone}) == ""


def _fig3_run(root: Path, num_train: int, algorithm: str, offset: float, done: bool) -> None:
    """A fabricated Fig. 3 run dir: config, marginal_curve.json, metrics.json."""
    run = root / f"{algorithm}_{num_train}"
    (run / ".hydra").mkdir(parents=True)
    cfg = {"data": {"name": "mnist", "num_train": num_train},
           "model": {"latent_dim": 3, "algorithm": algorithm}}  # fmt: skip
    (run / ".hydra" / "config.yaml").write_text(json.dumps(cfg))
    points = [{"samples": s, "train_log_px": -200 + offset + s / 1e6,
               "test_log_px": -205 + offset + s / 2e6, "wall_time_s": s / 1e4}
              for s in range(0, 6 * 10**7 + 1, 10**7)]  # fmt: skip
    if not done:
        points = points[:3]
    (run / "marginal_curve.json").write_text(json.dumps({"points": points}))
    (run / "metrics.json").write_text(json.dumps({"status": "completed" if done else "running"}))


def test_fig3_draws_two_panels_of_six_curves_from_marginal_curves(tmp_path: Path) -> None:
    for num_train in (1000, 50000):
        for offset, algo in enumerate(("aevb", "wake_sleep", "mcem")):
            _fig3_run(tmp_path / "runs", num_train, algo, offset, done=algo != "mcem")
    manifest = make_figures([tmp_path / "runs"], tmp_path / "out")
    fig = manifest["figures"]["fig3_mnist"]
    assert [p["num_train"] for p in fig["panels"]] == [1000, 50000]
    for panel in fig["panels"]:
        assert [c["algorithm"] for c in panel["curves"]] == ["aevb", "wake_sleep", "mcem"]
        assert [c["points"] for c in panel["curves"]] == [7, 7, 3]
        assert [c["status"] for c in panel["curves"]] == ["completed", "completed", "running"]
    assert (tmp_path / "out" / "fig3_mnist.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "out" / "fig3_mnist.pdf").is_file()
    assert "fig2_mnist" not in manifest["figures"]  # no learning curves, no Fig. 2
    table = (tmp_path / "out" / "summary.md").read_text().splitlines()
    assert table[0].startswith("| data | N_train | algorithm |") and len(table) == 2 + 6
    assert "| MNIST | 1000 | MCEM | 2.00e+07 | -178.0 | -193.0 |" in table[4]


def test_fig3_puts_the_untrained_models_point_below_an_axis_break(tmp_path: Path) -> None:
    """The curve's first point is the untrained model (-543 nats on MNIST); drawn on one axis it
    squashed the differences of a few nats between the trained models into a tenth of it."""
    from aevb.figures import figure3

    runs = []
    for algo, start, end in (("aevb", -150.0, -110.0), ("mcem", -190.0, -125.0)):
        run = RunInfo(tmp_path / algo, "mnist", 3, algo, num_train=1000)
        run.marginal = [{"samples": s, "train_log_px": v + 2, "test_log_px": v}
                        for s, v in ((0, -543.4), (2 * 10**6, start), (4 * 10**6, -130.0),
                                     (6 * 10**6, end))]  # fmt: skip
        runs.append(run)
    (panel,) = figure3(runs, "mnist", tmp_path)["panels"]
    low, high = panel["y_range"]  # MCEM's slow start in view, only the untrained point below
    assert panel["broken_axis"] and low == -190.0 and high == -108.0
    (paper,) = figure3(runs, "mnist", tmp_path, axes="paper")["panels"]
    assert paper["y_range"] == [-160.0, -100.0] and not paper["broken_axis"]


def _strip_overflow(fig) -> list[tuple[str, float, tuple[float, float]]]:
    """(axes title or "strip", y, limits) of every drawn data value outside its axes' y range.
    Matplotlib clips a line to its axes box, but a line within a line width of the edge is
    still painted along it: a curve of the upper strip then looked like a plateau at the top
    of the lower one."""
    out = []
    for ax in fig.axes:
        lo, hi = ax.get_ylim()
        for line in ax.get_lines():
            if line.get_transform() is not ax.transData:
                continue  # the break marks (axes coordinates)
            for y in line.get_ydata():
                if y == y and not lo <= y <= hi:
                    out.append((ax.get_title() or "strip", float(y), (lo, hi)))
    return out


def test_each_strip_of_a_broken_axis_draws_only_its_own_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aevb.figures as figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, out, stem: drawn.append(fig) or [])
    ref = {"train": 576.0, "test": 580.0}
    aevb = RunInfo(tmp_path / "a", "frey_face", 20, "aevb",
                   _curve([300, 800, 900, 1200, 1350]), z_ignored=ref)  # fmt: skip
    ws = RunInfo(tmp_path / "w", "frey_face", 20, "wake_sleep",
                 _curve([-900, 400, 576, 576, 700, 990], 0.0), z_ignored=ref)  # fmt: skip
    (panel,) = figures.figure2(
        {("frey_face", 20, "aevb"): aevb, ("frey_face", 20, "wake_sleep"): ws},
        "frey_face",
        tmp_path,
    )["panels"]
    runs = []
    for algo, start in (("aevb", -150.0), ("wake_sleep", -160.0)):
        run = RunInfo(tmp_path / algo, "mnist", 3, algo, num_train=1000)
        values = ((0, -543.4), (2e6, start), (4e6, -135.0), (6e6, -130.0))
        run.marginal = [{"samples": s, "train_log_px": v + 2, "test_log_px": v} for s, v in values]
        runs.append(run)
    (panel3,) = figures.figure3(runs, "mnist", tmp_path)["panels"]
    assert panel["broken_axis"] and panel3["broken_axis"] and len(drawn) == 2
    for fig in drawn:
        assert _strip_overflow(fig) == []
        low = fig.axes[1]
        # the lower strip still holds the curves' low parts, ending on its top edge
        curves = [
            line.get_ydata() for line in low.get_lines() if line.get_transform() is low.transData
        ]
        tops = [max(y for y in ys if y == y) for ys in curves if any(y == y for y in ys)]
        assert tops and max(tops) == pytest.approx(low.get_ylim()[1])


def test_fig3_takes_the_longer_of_a_run_and_its_committed_copy(tmp_path: Path) -> None:
    """scripts/reproduce_paper.sh draws from the campaign's run dirs and their copies in docs/:
    one curve and one table row per (N_train, algorithm), the one that reached more samples."""
    _fig3_run(tmp_path / "out", 1000, "mcem", 0.0, done=True)  # 7 points, completed
    _fig3_run(tmp_path / "copies", 1000, "mcem", 5.0, done=False)  # an older, shorter copy
    manifest = make_figures([tmp_path / "copies", tmp_path / "out"], tmp_path / "figs")
    (panel,) = manifest["figures"]["fig3_mnist"]["panels"]
    assert [(c["points"], c["status"]) for c in panel["curves"]] == [(7, "completed")]
    rows = (tmp_path / "figs" / "summary.md").read_text().splitlines()[2:]
    assert rows == ["| MNIST | 1000 | MCEM | 6.00e+07 | -140.0 | -175.0 | 100.0 min | completed |"]


def test_without_out_figures_go_to_a_figures_folder_not_over_a_sweeps_summary(
    tmp_path: Path,
) -> None:
    """`aevb-figures SWEEP` used to write SWEEP/summary.md, the file aevb-summarize writes."""
    sweep = tmp_path / "sweep"
    _fig3_run(sweep, 1000, "aevb", 0.0, done=True)
    (sweep / "summary.md").write_text("the sweep's table\n")
    make_figures([sweep])
    assert (sweep / "summary.md").read_text() == "the sweep's table\n"
    assert (sweep / "figures" / "fig3_mnist.png").is_file()
    assert (sweep / "figures" / "summary.md").read_text().startswith("| data | N_train |")


#: (arguments, exit status, what the output says): answered before torch and matplotlib load
LIGHT_COMMANDS = [
    (["--help"], 0, "usage: aevb-figures"),
    ([], 2, "the following arguments are required: dirs"),
    (["--no-such-option", "{tmp}"], 2, "unrecognized arguments: --no-such-option"),
    (["--axes", "wide", "{tmp}"], 2, "argument --axes: invalid choice: 'wide'"),
    (["--seed", "x", "{tmp}"], 2, "argument --seed: invalid int value: 'x'"),
    (["{tmp}/missing", "--out", "{tmp}/out"], 2, "missing is not a directory"),
    (["{tmp}", "--out", "{tmp}/out"], 2, "no aevb-train runs with learning_curve.json"),
]


@pytest.mark.parametrize(
    ("args", "code", "needle"), LIGHT_COMMANDS, ids=[" ".join(a) for a, _, _ in LIGHT_COMMANDS]
)
def test_help_and_refusals_load_neither_torch_nor_matplotlib(
    tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    """aevb.figures imports torch, Lightning and matplotlib only to draw or load a model."""
    (tmp_path / "sweep" / "0" / ".hydra").mkdir(parents=True)  # a run dir without results
    (tmp_path / "sweep" / "0" / ".hydra" / "config.yaml").write_text(
        "data: {name: mnist}\nmodel: {latent_dim: 2}\n"
    )
    argv = [a.format(tmp=tmp_path) for a in args]
    check_light_answer("aevb.figures", "aevb-figures", argv, tmp_path, code, needle)
