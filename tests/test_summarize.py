"""aevb-summarize on hand-built sweep dirs: rows, swept columns, failures, files, CLI errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from aevb.summarize import aggregate, error_line, find_jobs, main, summarize, write_summary

from .conftest import run_cli


def _job(
    sweep: Path,
    name: str,
    num: int,
    overrides: list[str],
    metrics: dict | None = None,
    log: str | None = None,
) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if log is not None:
        (job / "train.log").write_text(log)
    return job


def _completed(elbo: float, wall: float) -> dict:
    return {
        "status": "completed",
        "test/elbo": elbo,
        "test/nll": -elbo - 3.0,
        "test/active_units": 7.0,
        "best_val/elbo": elbo + 1,
        "samples_seen": 1000,
        "wall_time_s": wall,
    }


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """4 jobs in Hydra's layout, numbered so that path order and job order differ."""
    s = tmp_path / "multirun"
    common = ["data.root=/d", "trainer.max_epochs=1"]
    _job(s, "0", 0, [*common, "model.latent_dim=2", "model.beta=1"], _completed(-100.5, 3.25))
    _job(s, "10", 10, [*common, "model.latent_dim=5", "model.beta=4"], _completed(-90.0, 4.0))
    _job(
        s,
        "2",
        2,
        [*common, "model.latent_dim=0", "model.beta=1"],
        log=(
            "[2026-11-24 18:00:00,000][aevb.train][INFO] - starting\n"
            "[2026-11-24 18:00:01,000][aevb.summarize][ERROR] - job failed: ConfigError: "
            "model.latent_dim must be an integer > 0, got 0\n"
        ),
    )
    _job(
        s,
        "3",
        3,
        [*common, "model.latent_dim=5", "model.beta=1"],
        {"status": "diverged", "error": "training diverged at step 7", "samples_seen": 64},
    )
    (s / "multirun.yaml").write_text("hydra: {}\n")
    return s


def test_rows_follow_job_order_with_swept_columns_and_statuses(sweep: Path) -> None:
    swept, rows = summarize(sweep)
    assert swept == ["model.latent_dim", "model.beta"]  # the constant overrides are not columns
    assert [r["job"] for r in rows] == ["0", "2", "3", "10"]
    assert [(r["model.latent_dim"], r["model.beta"]) for r in rows] == [
        ("2", "1"),
        ("0", "1"),
        ("5", "1"),
        ("5", "4"),
    ]
    ok = rows[0]
    assert ok["status"] == "completed" and ok["error"] == ""
    assert ok["test/elbo"] == -100.5 and ok["test/nll"] == 97.5 and ok["samples_seen"] == 1000
    assert ok["test/active_units"] == 7.0 and ok["wall_time_s"] == 3.25
    assert ok["overrides"] == "data.root=/d trainer.max_epochs=1 model.latent_dim=2 model.beta=1"
    failed = rows[1]
    assert failed["status"] == "failed" and failed["test/elbo"] is None
    assert failed["error"] == "ConfigError: model.latent_dim must be an integer > 0, got 0"
    diverged = rows[2]
    assert diverged["status"] == "failed" and diverged["samples_seen"] == 64
    assert diverged["error"] == "diverged: training diverged at step 7"


def test_files_are_written_and_hold_every_row(sweep: Path, tmp_path: Path) -> None:
    csv_path, md_path = write_summary(sweep)
    assert csv_path == sweep / "summary.csv" and md_path == sweep / "summary.md"
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "2", "3", "10"]
    assert float(rows[3]["test/elbo"]) == -90.0 and rows[1]["test/elbo"] == ""
    assert [r["status"] for r in rows] == ["completed", "failed", "failed", "completed"]
    md = md_path.read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| job | model.latent_dim | model.beta | test/elbo | test/nll")
    assert len(table) == 1 + 4  # header + one row per job
    assert "| 10 | 5 | 4 | -90.00 | 87.00 | 7 | -89.00 | 1000 | 4.0 | completed |" in md
    assert "4 jobs, 2 completed, 2 failed" in md
    assert "`data.root=/d trainer.max_epochs=1`" in md  # common overrides listed once
    assert not list(sweep.glob(".summary*"))  # no temporary files left by the atomic writes
    out = tmp_path / "elsewhere"
    write_summary(sweep, out)
    assert (out / "summary.csv").read_text() == csv_path.read_text()


def test_job_without_metrics_or_log_is_failed_with_a_reason(tmp_path: Path) -> None:
    s = tmp_path / "sweep"
    crashed = _job(s, "0", 0, ["model.beta=1"])
    _job(s, "1", 1, ["model.beta=2"], _completed(-95.0, 1.0))
    traceback = _job(
        s, "2", 2, ["model.beta=3"], log="Traceback (most recent call last):\nKeyError: 'x'\n"
    )
    _, rows = summarize(s)
    assert [r["status"] for r in rows] == ["failed", "completed", "failed"]
    assert "no metrics.json" in rows[0]["error"] and rows[0]["error"] == error_line(crashed)
    assert error_line(traceback) == "KeyError: 'x'"


def test_nested_job_dirs_are_found(tmp_path: Path) -> None:
    s = tmp_path / "sweep"
    _job(s, "a/b", 1, ["model.beta=2"], _completed(-1.0, 1.0))
    _job(s, "a/c", 0, ["model.beta=1"], _completed(-2.0, 1.0))
    (s / ".hydra").mkdir()  # the sweep dir's own files are not a job
    (s / ".hydra" / "overrides.yaml").write_text("[]\n")
    assert [p.relative_to(s).as_posix() for p in find_jobs(s)] == ["a/c", "a/b"]


def test_cli_prints_the_table(sweep: Path, tmp_path: Path) -> None:
    proc = run_cli([str(sweep)], tmp_path, script="aevb.summarize")
    assert proc.returncode == 0, proc.stderr
    assert "| 3 | 5 | 1 |" in proc.stdout and "wrote" in proc.stderr
    assert (sweep / "summary.csv").is_file()


def test_main_refuses_non_sweeps_in_one_line(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main([str(sweep), "--quiet"])
    captured = capsys.readouterr()
    assert captured.out == "" and "summary.md" in captured.err
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, reason in ((tmp_path / "missing", "is not a directory"), (empty, "no jobs in")):
        with pytest.raises(SystemExit) as exit_info:
            main([str(bad)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("aevb-summarize: error:") and reason in err[0]


def test_sampled_values_are_shortened_in_markdown_only(tmp_path: Path) -> None:
    s = tmp_path / "sweep"
    _job(s, "0", 0, ["optim.lr=0.00013066739238053285"], _completed(-1.0, 1.0))
    _job(s, "1", 1, ["optim.lr=0.001"], _completed(-2.0, 1.0))
    csv_path, md_path = write_summary(s)
    assert "| 0 | 0.0001307 |" in md_path.read_text()
    assert "| 1 | 0.001 |" in md_path.read_text()
    assert "0.00013066739238053285" in csv_path.read_text()


@pytest.fixture
def seed_sweep(tmp_path: Path) -> Path:
    """model.latent_dim=2,5 x seed=1,2,3 with known test ELBOs; one job of latent_dim=5 failed."""
    s = tmp_path / "seeds"
    elbos = {(2, 1): -100.0, (2, 2): -102.0, (2, 3): -104.0, (5, 1): -90.0, (5, 2): -91.0}
    for num, (dim, seed) in enumerate((d, s_) for d in (2, 5) for s_ in (1, 2, 3)):
        overrides = ["trainer.max_epochs=1", f"model.latent_dim={dim}", f"seed={seed}"]
        metrics = _completed(elbos[dim, seed], 2.0 * seed) if (dim, seed) in elbos else None
        _job(s, str(num), num, overrides, metrics, log=None if metrics else "OSError: disk\n")
    return s


def test_jobs_differing_only_in_seeds_are_aggregated(seed_sweep: Path) -> None:
    keys, groups = aggregate(*summarize(seed_sweep))
    assert keys == ["model.latent_dim"]  # the seed is not a configuration key
    small, large = groups
    assert small["model.latent_dim"] == "2" and small["jobs"] == "0 1 2" and small["failed"] == 0
    assert small["test/elbo/mean"] == -102.0 and small["test/elbo/n"] == 3
    assert small["test/elbo/std"] == pytest.approx(2.0)  # sample std: sqrt((4 + 0 + 4) / 2)
    assert small["test/nll/mean"] == 99.0 and small["wall_time_s/mean"] == 4.0
    assert large["jobs"] == "3 4 5" and large["failed"] == 1  # the failed job is not averaged
    assert large["test/elbo/mean"] == -90.5 and large["test/elbo/n"] == 2
    assert large["test/elbo/std"] == pytest.approx(0.5**0.5)


def test_summary_md_shows_the_seed_table_first_and_keeps_every_job(seed_sweep: Path) -> None:
    csv_path, md_path = write_summary(seed_sweep)
    md = md_path.read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| model.latent_dim | n | failed | test/elbo | test/nll |")
    assert table[1].startswith("| 2 | 3 | 0 | -102.00 ± 2.00 | 99.00 ± 2.00 | 7.0 ± 0.0 |")
    assert table[2].startswith("| 5 | 2 | 1 | -90.50 ± 0.71 |") and table[2].endswith("| 3 4 5 |")
    assert md.index("## Over seeds") < md.index("## Per job")
    assert table[3].startswith("| job | model.latent_dim | seed | test/elbo")
    assert len(table) == 1 + 2 + 1 + 6  # both tables: every configuration, every job
    with (seed_sweep / "summary_seeds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["jobs"] for r in rows] == ["0 1 2", "3 4 5"]
    assert float(rows[1]["test/elbo/mean"]) == -90.5 and rows[1]["test/elbo/n"] == "2"
    assert len(list(csv.DictReader(csv_path.open()))) == 6


def test_data_seed_and_plus_prefixed_seeds_group_too(tmp_path: Path) -> None:
    s = tmp_path / "sweep"
    _job(s, "0", 0, ["model.beta=1", "data.seed=0", "++seed=1"], _completed(-10.0, 1.0))
    _job(s, "1", 1, ["model.beta=1", "data.seed=1", "++seed=2"], _completed(-12.0, 1.0))
    _job(s, "2", 2, ["model.beta=2", "data.seed=0", "++seed=1"], _completed(-20.0, 1.0))
    keys, groups = aggregate(*summarize(s))
    assert keys == ["model.beta"]
    assert [(g["jobs"], g["test/elbo/mean"], g["test/elbo/std"]) for g in groups] == [
        ("0 1", -11.0, pytest.approx(2**0.5)),
        ("2", -20.0, None),  # one job: no standard deviation
    ]
    assert "| 2 | 1 | 0 | -20.00 | " in write_summary(s)[1].read_text()


def test_no_seed_table_when_no_seed_is_swept(sweep: Path) -> None:
    md = write_summary(sweep)[1].read_text()
    assert "Over seeds" not in md and (sweep / "summary_seeds.csv").is_file()


def test_the_appendix_d_estimate_is_a_column_only_when_a_job_reports_it(
    sweep: Path, tmp_path: Path
) -> None:
    """MCEM has no bound: its -log p(x) is test/nll_hmc, shown (and aggregated over seeds) when
    a job reports it; sweeps without it keep their columns."""
    assert "test/nll_hmc" not in summarize(sweep)[1][0]
    s = tmp_path / "fig3"
    mcem = {"status": "completed", "test/nll_hmc": 130.0, "samples_seen": 100, "wall_time_s": 2.0}
    _job(s, "0", 0, ["model.algorithm=mcem", "seed=1"], mcem)
    _job(s, "1", 1, ["model.algorithm=mcem", "seed=2"], {**mcem, "test/nll_hmc": 132.0})
    _job(s, "2", 2, ["model.algorithm=aevb", "seed=1"], _completed(-100.0, 1.0))
    swept, rows = summarize(s)
    assert [r["test/nll_hmc"] for r in rows] == [130.0, 132.0, None]
    groups = aggregate(swept, rows)[1]
    assert groups[0]["test/nll_hmc/mean"] == 131.0 and groups[0]["test/nll_hmc/n"] == 2
    write_summary(s)
    md = (s / "summary.md").read_text()
    assert md.count("| test/nll_hmc |") == 2  # a column of both tables
    assert "131.00 ± 1.41" in md and "| 132.00 |" in md
    header = next(csv.reader((s / "summary.csv").open()))
    assert "test/nll_hmc" in header
