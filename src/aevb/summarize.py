"""`aevb-summarize <multirun dir>`: one row per job of a Hydra sweep -> summary.csv, summary.md.

A job is any directory below the sweep dir with a `.hydra/overrides.yaml` (Hydra writes it
before the job starts, so crashed jobs are found too). Each row holds the job's swept
overrides, its final test metrics from `metrics.json`, samples seen, wall time and a status:
`completed`, `interrupted` (SIGINT/SIGTERM; the header then says so), or `failed` with the
error line (from metrics.json, else the last ERROR line of the job's log file, which
`SweepSummary.on_job_end` writes for every failed job).

Jobs that differ only in their seeds (`seed`, `data.seed`: repeats of one configuration) are
grouped by `aggregate`: per metric the mean, the sample standard deviation (n - 1 in the
denominator; empty for n = 1) and n over the group's completed jobs, in summary_seeds.csv and,
when the sweep varies a seed, as the first table of summary.md.

`SweepSummary` is a Hydra callback (conf/train.yaml: hydra.callbacks.summary) that writes the
summary at the end of every multirun -- also when a failed job makes Hydra end the sweep with
an error, via an exit hook registered when the multirun starts.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import io
import json
import logging
import math
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aevb.atomic import write_bytes_atomic
from aevb.errors import SummaryError, one_line
from aevb.rundir import RunDir

log = logging.getLogger("aevb.summarize")

#: metrics.json keys reported per job, in column order
METRIC_COLUMNS = (
    "test/elbo",
    "test/nll",
    "test/active_units",
    "best_val/elbo",
    "samples_seen",
    "wall_time_s",
)
#: metrics.json keys shown only when a job of the sweep reports them: the Appendix D estimate
#: of -log p(x) of runs that evaluate it (MCEM, which has no bound, and Fig. 3's runs)
OPTIONAL_COLUMNS = ("test/nll_hmc",)
#: overrides that only repeat a configuration: jobs differing in these alone are aggregated
SEED_KEYS = ("seed", "data.seed")
#: a Hydra job-log line at level ERROR: "[time][logger][ERROR] - message"
_ERROR_LINE = re.compile(r"\]\[ERROR\] - (.*)$")
#: the last line of a Python traceback: "SomeError: message"
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Diverged|Interrupt)\b.*)$")
_JOB_FAILED = "job failed: "
_NO_RESULT = "no metrics.json: the job crashed, was killed, or is still running"


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job directories below `sweep_dir` in job order (hydra.job.num, then path)."""
    jobs = [
        marker.parent.parent
        for marker in sweep_dir.rglob(RunDir.OVERRIDES)
        if marker.parent.parent != sweep_dir
    ]

    def order(job: Path) -> tuple[int, list[Any]]:
        num = -1
        hydra_yaml = RunDir(job).hydra_config
        if hydra_yaml.is_file():
            try:
                value = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.num")
                num = int(value) if value is not None else -1
            except Exception:  # noqa: BLE001 -- ordering only; fall back to the path
                num = -1
        rel = str(job.relative_to(sweep_dir))
        natural = [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", rel)]
        return num, natural

    return sorted(jobs, key=order)


def _override_pairs(job: Path) -> list[tuple[str, str]]:
    overrides = OmegaConf.load(RunDir(job).overrides)
    pairs = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        pairs.append((key, value) if sep else (str(item), ""))
    return pairs


def error_line(job: Path, metrics: dict[str, Any] | None = None) -> str:
    """Why a job failed, in one line: metrics.json's error, else its log files, else a guess."""
    if metrics and metrics.get("error"):
        return one_line(f"{metrics.get('status', 'failed')}: {metrics['error']}")
    found: str | None = None
    for log_file in sorted(job.glob("*.log")):
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if m := _ERROR_LINE.search(line):
                found = m.group(1)
        if found is None:
            found = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln)), None)
    if found:
        return one_line(found.removeprefix(_JOB_FAILED))
    if metrics is not None:
        return f"status {metrics.get('status')!r} in metrics.json"
    return _NO_RESULT


def read_job(job: Path) -> dict[str, Any]:
    """One summary row: overrides, metrics, status and (for failed jobs) the error line."""
    metrics: dict[str, Any] | None = None
    path = RunDir(job).metrics
    if path.is_file():
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            metrics = {"status": "unreadable", "error": f"metrics.json unreadable ({err})"}
        if not isinstance(metrics, dict):
            metrics = {"status": "unreadable", "error": "metrics.json is not a JSON object"}
    row: dict[str, Any] = {"overrides": _override_pairs(job)}
    for key in (*METRIC_COLUMNS, *OPTIONAL_COLUMNS):
        value = (metrics or {}).get(key)
        row[key] = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if metrics is not None and metrics.get("status") == "completed":
        row["status"], row["error"] = "completed", ""
    elif metrics is not None and metrics.get("status") == "interrupted":
        row["status"], row["error"] = "interrupted", one_line(metrics.get("error", ""))
    else:
        row["status"], row["error"] = "failed", error_line(job, metrics)
    return row


def summarize(sweep_dir: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(swept keys, rows) of every job below `sweep_dir`; each row is a flat dict of columns."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SummaryError(f"{sweep_dir} is not a directory (pass a Hydra multirun dir)")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise SummaryError(
            f"no jobs in {sweep_dir}: expected subdirectories with .hydra/overrides.yaml "
            "(pass the multirun dir, e.g. outputs/multirun/<date>/<time>)"
        )
    raw = [read_job(job) for job in jobs]
    values_by_key: dict[str, set[str]] = {}
    for r in raw:
        for key, value in r["overrides"]:
            values_by_key.setdefault(key, set()).add(value)
    # swept = varies between jobs (or is missing from some); keeps first-seen order
    seen = list(dict.fromkeys(k for r in raw for k, _ in r["overrides"]))
    swept = [
        k
        for k in seen
        if len(values_by_key[k]) > 1 or any(k not in dict(r["overrides"]) for r in raw)
    ]
    reported = [k for k in OPTIONAL_COLUMNS if any(r[k] is not None for r in raw)]
    metrics = [*METRIC_COLUMNS, *reported]
    rows = []
    for job, r in zip(jobs, raw, strict=True):
        given = dict(r["overrides"])
        row: dict[str, Any] = {"job": str(job.relative_to(sweep_dir))}
        row.update({k: given.get(k, "") for k in swept})
        row.update({k: r[k] for k in metrics})
        row["status"], row["error"] = r["status"], r["error"]
        row["overrides"] = " ".join(f"{k}={v}" if v else k for k, v in r["overrides"])
        rows.append(row)
    return swept, rows


def is_seed(key: str) -> bool:
    """Whether an override key is a seed (`seed`, `data.seed`, also as `+seed` / `++seed`)."""
    return key.lstrip("+~") in SEED_KEYS


def aggregate(
    swept: Sequence[str], rows: Sequence[dict[str, Any]]
) -> tuple[list[str], list[dict[str, Any]]]:
    """(configuration keys, one row per configuration): the jobs grouped over their seeds.

    A configuration is the jobs' values of the swept keys other than seeds, in order of first
    appearance. Each row holds those values, `jobs` (the job names), `failed` (how many did not
    complete) and, per metric M of the rows' metric columns over the completed jobs that report it,
    `M/mean`, `M/std` (sample standard deviation, None for n < 2) and `M/n`.
    """
    keys = [k for k in swept if not is_seed(k)]
    metrics = metric_columns(rows)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for values, members in groups.items():
        agg: dict[str, Any] = dict(zip(keys, values, strict=True))
        agg["jobs"] = " ".join(r["job"] for r in members)
        agg["failed"] = sum(r["status"] != "completed" for r in members)
        for metric in metrics:
            xs = [
                r[metric] for r in members if r["status"] == "completed" and r[metric] is not None
            ]
            agg[f"{metric}/mean"] = statistics.fmean(xs) if xs else None
            agg[f"{metric}/std"] = statistics.stdev(xs) if len(xs) > 1 else None
            agg[f"{metric}/n"] = len(xs)
        out.append(agg)
    return keys, out


def metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metric columns of summary rows (or aggregated rows): METRIC_COLUMNS, then the
    OPTIONAL_COLUMNS that `summarize` kept because a job reports them."""
    first = rows[0] if rows else {}
    optional = [k for k in OPTIONAL_COLUMNS if k in first or f"{k}/n" in first]
    return [*METRIC_COLUMNS, *optional]


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if key in ("samples_seen", "test/active_units"):
        return f"{int(value)}"
    if key == "wall_time_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    text = str(value)
    if re.fullmatch(r"-?\d+\.\d{5,}(e-?\d+)?", text):  # a sampled value, e.g. Optuna's lr
        text = f"{float(text):.4g}"
    return text.replace("|", "\\|")


def _mean_std_cell(metric: str, agg: dict[str, Any], completed: int) -> str:
    """'mean ± std' in the metric's precision; '(n=k)' when fewer than the completed jobs."""
    mean, std, n = agg[f"{metric}/mean"], agg[f"{metric}/std"], agg[f"{metric}/n"]
    if mean is None:
        return ""
    digits = {"samples_seen": 0, "test/active_units": 1, "wall_time_s": 1}.get(metric, 2)
    text = f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")
    return text + (f" (n={n})" if n != completed else "")


def seeds_markdown(keys: list[str], groups: list[dict[str, Any]]) -> list[str]:
    """The aggregated table's markdown lines: one row per configuration, mean ± std per metric."""
    metrics = metric_columns(groups)
    columns = [*keys, "n", "failed", *metrics, "jobs"]
    lines = [
        "## Over seeds",
        "",
        f"Jobs that differ only in {' / '.join(SEED_KEYS)}, grouped: mean ± sample standard "
        "deviation over the n completed jobs of each configuration.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for agg in groups:
        completed = len(agg["jobs"].split()) - agg["failed"]
        cells = [_cell(k, agg[k]) for k in keys] + [str(completed), str(agg["failed"])]
        cells += [_mean_std_cell(m, agg, completed) for m in metrics]
        lines.append("| " + " | ".join([*cells, agg["jobs"]]) + " |")
    return lines


def to_markdown(sweep_dir: Path, swept: list[str], rows: list[dict[str, Any]]) -> str:
    """Markdown tables (nats per datapoint), without the constant overrides: the jobs grouped
    over seeds first when the sweep varies a seed, then one row per job."""
    columns = ["job", *swept, *metric_columns(rows), "status", "error"]
    done = sum(r["status"] == "completed" for r in rows)
    stopped = sum(r["status"] == "interrupted" for r in rows)
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} jobs, {done} completed, {len(rows) - done - stopped} failed"
        + (f", {stopped} interrupted (INTERRUPTED sweep)" if stopped else "")
        + ". ELBO and NLL in nats "
        "per datapoint (test set, best checkpoint); wall_time_s = fit + test.",
        "",
    ]
    if any(is_seed(k) for k in swept):
        lines += [*seeds_markdown(*aggregate(swept, rows)), "", "## Per job", ""]
    lines += [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |")
    common = rows[0]["overrides"].split() if rows else []
    common = [o for o in common if o.partition("=")[0] not in swept]
    if common:
        lines += ["", "Overrides common to all jobs: `" + " ".join(common) + "`"]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write summary.csv, summary_seeds.csv and summary.md (atomically) into `out_dir` (default:
    the sweep dir); returns the paths of summary.csv and summary.md."""
    sweep_dir = Path(sweep_dir)
    swept, rows = summarize(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir
    csv_path = write_bytes_atomic(out / "summary.csv", to_csv(rows).encode())
    write_bytes_atomic(out / "summary_seeds.csv", to_csv(aggregate(swept, rows)[1]).encode())
    md_path = write_bytes_atomic(out / "summary.md", to_markdown(sweep_dir, swept, rows).encode())
    return csv_path, md_path


class SweepSummary(Callback):
    """Hydra callback: the sweep summary at the end of every multirun, failed jobs included.

    Hydra ends a multirun with an error (and skips on_multirun_end) when a job failed, after
    all jobs of the batch have run; an exit hook registered in on_multirun_start writes the
    summary then. on_job_end logs a failed job's exception as one ERROR line in its log file.
    """

    def __init__(self) -> None:
        self._sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(self._write)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:
            try:
                job_return.return_value  # noqa: B018 -- re-raises the job's exception
            except Exception as err:  # noqa: BLE001 -- any failure is reported
                log.error("%s%s: %s", _JOB_FAILED, type(err).__name__, one_line(str(err)))

    def _write(self) -> None:
        sweep_dir, self._sweep_dir = self._sweep_dir, None  # once per multirun
        if sweep_dir is None:
            return
        try:
            _, md_path = write_summary(sweep_dir)
        except (SummaryError, OSError) as err:
            log.warning("no sweep summary: %s", err)
            return
        print(f"sweep summary: {md_path} (and summary.csv)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    """Console script `aevb-summarize`."""
    parser = argparse.ArgumentParser(
        prog="aevb-summarize",
        description="Summarize a Hydra multirun of aevb-train: summary.csv and summary.md, one "
        "row per job (overrides, test/elbo, test/nll, active units, samples seen, wall time, "
        "status), and summary_seeds.csv: jobs that differ only in seed / data.seed grouped, with "
        "mean, standard deviation and n per metric (the first table of summary.md).",
    )
    parser.add_argument("sweep_dir", help="the multirun dir, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("--out", default=None, help="where to write (default: the sweep dir)")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)
    try:
        csv_path, md_path = write_summary(args.sweep_dir, args.out)
    except (SummaryError, OSError) as err:
        print(f"aevb-summarize: error: {err}", file=sys.stderr)
        sys.exit(2)
    if not args.quiet:
        print(md_path.read_text(), end="")
    print(f"wrote {csv_path} and {md_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
