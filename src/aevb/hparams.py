"""TensorBoard's HParams tab: one row per run, and in a sweep the swept keys as its columns.

The HParams plugin takes its columns from one *experiment* summary (`hparams_config`: the
hyper-parameters and metrics) and a row from each run's *session* summary (`hparams`: that
run's values); the dashboard shows the first five of each by default. A run that declares
every hyper-parameter makes the columns alphabetical (activation, algorithm, ...), so:

- a multirun declares the experiment once, in the sweep dir (`SweepHParams`, a Hydra callback
  in conf/train.yaml): the swept keys -- the command line's sweeps (`model.latent_dim=2,20`)
  and the sweeper's `params` (Optuna's search space) -- with their domains, and the test
  metrics;
- each run writes its session: its hyper-parameters (`Settings.hparams()`) plus its own
  overrides under their command-line names (`model.latent_dim`, `seed`), so the swept
  columns are filled; a run outside a multirun also declares an experiment of all of them.

The summaries are built with tensorboard's `summary_v2` protobuf helpers (no TensorFlow).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp

#: the metric columns, in display order: final test metrics (best checkpoint) and best val ELBO
METRICS = ("test/elbo", "test/nll", "test/active_units", "best_val/elbo")

Value = bool | int | float | str


def _parse(overrides: Iterable[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(list(overrides))


def _name(override: Override) -> str | None:
    """The column name of an override (`+seed=1` -> `seed`); None for hydra's own keys."""
    key = override.key_or_group
    return None if key.startswith("hydra") else key


def _domain(override: Override) -> hp.Domain | None:
    """The values a sweep override ranges over, as a TensorBoard domain (None: unknown)."""
    sweep = override.value()
    if override.value_type is not None and override.value_type.name == "INTERVAL_SWEEP":
        return hp.RealInterval(float(sweep.start), float(sweep.end))
    if not override.is_discrete_sweep():
        return None  # e.g. glob(...) over a config group
    values = list(override.sweep_iterator())
    if values and all(isinstance(v, bool) for v in values):
        return hp.Discrete(values, dtype=bool)
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return hp.Discrete([float(v) for v in values], dtype=float)
    return hp.Discrete(list(override.sweep_string_iterator()), dtype=str)


def swept_domains(
    overrides: Sequence[str], sweeper_params: Mapping[str, Any] | None = None
) -> dict[str, hp.Domain | None]:
    """Swept key -> domain, from a multirun's `hydra.overrides.task` and `hydra.sweeper.params`
    (the command line wins for a key in both); keys of hydra's own config are left out."""
    lines = [f"{key}={value}" for key, value in (sweeper_params or {}).items()]
    swept: dict[str, hp.Domain | None] = {}
    for override in _parse([*lines, *overrides]):
        if override.is_sweep_override() and (name := _name(override)) is not None:
            swept[name] = _domain(override)
    return swept


def override_values(overrides: Sequence[str]) -> dict[str, Value]:
    """A run's overrides (`hydra.overrides.task`) as hyper-parameters named by their keys:
    numbers, booleans and strings as typed, anything else (lists, null) as written."""
    values: dict[str, Value] = {}
    for override in _parse(overrides):
        name = _name(override)
        if name is None or override.is_delete() or override.is_sweep_override():
            continue
        value = override.value()
        typed = isinstance(value, Value)  # bool | int | float | str
        values[name] = value if typed else override.get_value_element_as_str()
    return values


def experiment_summary(
    hparams: Mapping[str, hp.Domain | None], metrics: Sequence[str] = METRICS
) -> Summary:
    """The experiment: these hyper-parameters and metrics are the HParams tab's columns."""
    return hp.hparams_config_pb(
        hparams=[hp.HParam(name, domain) for name, domain in hparams.items()],
        metrics=[hp.Metric(tag, display_name=tag) for tag in metrics],
    )


def session_summaries(values: Mapping[str, Any]) -> list[Summary]:
    """A run's session: its hyper-parameter values (start) and a successful end."""
    flat = {k: v if isinstance(v, Value) else str(v) for k, v in values.items()}
    end = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(
            status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()
        )
    )
    end_summary = Summary()
    end_summary.value.add(
        tag=metadata.SESSION_END_INFO_TAG,
        metadata=metadata.create_summary_metadata(end),
        tensor=metadata.NULL_TENSOR,
    )
    return [hp.hparams_pb(flat), end_summary]


def write_sweep_experiment(sweep_dir: str | Path, config: DictConfig) -> dict[str, Any] | None:
    """Declare the multirun `config`'s swept keys and METRICS in an event file in `sweep_dir`;
    returns the swept domains (None, and nothing written, when nothing is swept)."""
    # tensorboard's own writer, not torch.utils.tensorboard's: the launching process of a sweep
    # never imports torch (2 s here, before the first job starts)
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    params = config.hydra.sweeper.get("params") if "sweeper" in config.hydra else None
    swept = swept_domains(list(config.hydra.overrides.task), params)
    if not swept:
        return None
    writer = EventFileWriter(str(sweep_dir))
    try:
        writer.add_event(Event(wall_time=time.time(), summary=experiment_summary(swept)))
    finally:
        writer.close()
    return swept


class SweepHParams(Callback):
    """Hydra callback: at the start of a multirun, the HParams columns = the swept keys."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        write_sweep_experiment(config.hydra.sweep.dir, config)
