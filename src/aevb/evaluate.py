"""`aevb-eval RUN [eval.key=value ...]`: evaluate a finished run on its own test set.

RUN is a run directory written by `aevb-train` or a checkpoint inside one. Computes test/nll
(importance-sampled, Burda et al. 2016, k = eval.iw_samples, default 5000), test/elbo, the
IWAE bounds test/iwae_k{K}, active units, per-dimension KL and posterior-mean activity, and
writes them to RUN/eval.json atomically (metrics.json is never touched). Prints one line.
`eval.marginal=hmc` adds test/nll_hmc, the Appendix D estimate (aevb.marginal_curve) on the
first `eval.hmc_points` test images, for every algorithm (MCEM, without an encoder, has only it).
Progress goes to stderr every 10 s. SIGINT/SIGTERM stop it at once (exit 130/143); eval.json
then says `interrupted` unless it holds an earlier completed result, which is kept. When RUN is
not writable, the record goes to ./<run name>.eval.json (else stdout), never lost.

This module is the command line, its checks and eval.json; it loads without torch, so `--help`
and a refused command line answer at once. The evaluation job (`aevb.evaluation`: torch,
Lightning) is imported once the overrides and RUN have been accepted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aevb import signals
from aevb.atomic import describe_os_error, write_json_atomic
from aevb.config import EvalConfig
from aevb.devices import check_accelerator
from aevb.errors import ConfigError, DataError, one_line
from aevb.rundir import RunDir

#: aevb-eval's defaults; aevb-train's test/nll uses conf/train.yaml's smaller eval.iw_samples
DEFAULTS = EvalConfig(iw_samples=5000)
ACCELERATORS = ("auto", "cpu", "gpu")


def resolve(target: str | Path) -> tuple[Path, Path | None]:
    """(run dir, checkpoint or None for the run's best) of a run dir or a checkpoint file."""
    path = Path(target).expanduser().resolve()
    if path.is_file():
        if path.suffix != ".ckpt":
            raise FileNotFoundError(f"{target} is neither a run directory nor a .ckpt file")
        for run in (RunDir(path.parent), RunDir(path.parent.parent)):
            if run.is_run():
                return run.path, path
        raise FileNotFoundError(f"{target}: no run directory ({RunDir.CONFIG}) above it")
    if not path.is_dir():
        raise FileNotFoundError(f"{target} does not exist (expected a run directory or a .ckpt)")
    if not RunDir(path).is_run():
        raise FileNotFoundError(f"{target} is not an aevb run directory (no {RunDir.CONFIG})")
    return path, None


def parse_overrides(overrides: list[str]) -> tuple[EvalConfig, str]:
    """`eval.<field>=value` and `accelerator=auto|cpu|gpu` -> (EvalConfig, accelerator)."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(bad[0], "an override key=value (e.g. eval.iw_samples=5000)", bad[0])
    cfg = OmegaConf.from_dotlist(overrides)
    values: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    accelerator = values.pop("accelerator", "auto")
    if accelerator not in ACCELERATORS:
        raise ConfigError("accelerator", f"one of {list(ACCELERATORS)}", accelerator)
    evals = values.pop("eval", {}) or {}
    if values or not isinstance(evals, dict):
        key = next(iter(values), "eval")
        raise ConfigError(key, "eval.<field> or accelerator", "unknown key")
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(evals) - fields)
    if unknown:
        raise ConfigError(f"eval.{unknown[0]}", f"one of {sorted(fields)}", "unknown key")
    if "iwae_ks" not in evals and isinstance(evals.get("iw_samples"), int):  # keep K <= k
        evals["iwae_ks"] = [k for k in DEFAULTS.iwae_ks if k <= evals["iw_samples"]]
    return dataclasses.replace(DEFAULTS, **evals), accelerator


def evaluate(target: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate the run (or checkpoint) `target`; writes and returns the eval.json record.

    The overrides, the accelerator and `target` are checked before the evaluation job
    (`aevb.evaluation`: torch, Lightning) is imported."""
    settings, accelerator = parse_overrides(list(overrides or []))
    check_accelerator(accelerator, "accelerator")
    run_dir, ckpt = resolve(target)
    from aevb.evaluation import evaluate_run

    record = evaluate_run(run_dir, ckpt, settings, accelerator)
    save_record(run_dir, record)
    return record


def save_record(run_dir: Path, record: dict[str, Any]) -> bool:
    """Write eval.json into the run dir atomically; False if an interrupted record was not
    written because eval.json holds a completed result.

    If the run dir is not writable, the record goes to ./<run name>.eval.json (else to stdout)
    and an OSError naming where it went is raised: a finished computation is never lost.
    """
    target = RunDir(run_dir).eval
    if record.get("status") != "completed" and _completed(target):
        return False
    try:
        write_json_atomic(target, record)
    except OSError as err:
        where = Path.cwd() / f"{run_dir.name}.eval.json"
        try:
            write_json_atomic(where, record)
        except OSError:
            print(json.dumps(record, indent=2, sort_keys=True))
            where = "stdout"
        raise OSError(
            err.errno, f"{err.strerror} (the result is in {where})", err.filename
        ) from err
    return True


def _completed(path: Path) -> bool:
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(old, dict) and old.get("status", "completed") == "completed"


def summary(record: dict[str, Any], run_dir: Path) -> str:
    """One line: test/nll, test/elbo, the gap -ELBO - NLL, test/nll_hmc, k, images, seconds."""
    names = {"gap": "gap(-elbo-nll)"}
    keys = ("test/nll", "test/elbo", "gap", "test/nll_hmc")
    parts = [f"{names.get(k, k)}={record[k]:.2f}" for k in keys if record.get(k) is not None]
    units = record.get("test/active_units")
    active = f" active_units={units:.0f}" if units is not None else ""
    hmc = f", hmc on {record['hmc_points']}" if "hmc_points" in record else ""
    return (
        f"aevb-eval: {' '.join(parts)} nats{active} (k={record['eval']['iw_samples']}{hmc}, "
        f"{record['num_test']} test images, {record['seconds']:.1f} s) -> {run_dir / 'eval.json'}"
    )


def main(argv: list[str] | None = None) -> None:
    """Console script entry point (`aevb-eval`)."""
    parser = argparse.ArgumentParser(
        prog="aevb-eval",
        description="Importance-weighted test NLL and latent metrics of a finished aevb run.",
        epilog="overrides: eval.iw_samples=5000 eval.iwae_ks=[1,5,50] eval.iw_chunk=null "
        "eval.seed=0 eval.marginal=none|hmc eval.hmc_points=1000 accelerator=auto|cpu|gpu",
    )
    parser.add_argument("run", help="run directory of aevb-train, or a checkpoint inside one")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    try:
        with signals.raising():
            record = evaluate(args.run, args.overrides)
    except signals.Interrupted as err:
        run_dir = resolve(args.run)[0]
        written = save_record(run_dir, {"status": "interrupted", "error": str(err)})
        note = "eval.json says interrupted" if written else "the completed eval.json is kept"
        print(f"aevb-eval: {err}; {note}", file=sys.stderr)
        sys.exit(err.exit_code)
    except (FileNotFoundError, ConfigError, DataError, ValueError) as err:
        print(f"aevb-eval: error: {one_line(err, limit=None)}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        print(f"aevb-eval: error: {describe_os_error(err)}", file=sys.stderr)
        sys.exit(2)
    except OmegaConfBaseException as err:  # a key missing from the run's .hydra/config.yaml
        first = str(err).splitlines()[0]
        print(
            f"aevb-eval: error: {args.run}/.hydra/config.yaml: {err.full_key}: {first}",
            file=sys.stderr,
        )
        sys.exit(2)
    except _out_of_memory() as err:
        print(
            f"aevb-eval: error: out of memory ({type(err).__name__}); lower eval.iw_samples or "
            "set eval.iw_chunk to fewer decoder rows per pass",
            file=sys.stderr,
        )
        sys.exit(2)
    print(summary(record, resolve(args.run)[0]))


def _out_of_memory() -> tuple[type[BaseException], ...]:
    """MemoryError, and torch's out-of-memory error once torch is loaded (only then raised)."""
    torch = sys.modules.get("torch")
    return (MemoryError,) if torch is None else (MemoryError, torch.OutOfMemoryError)


if __name__ == "__main__":
    main()
