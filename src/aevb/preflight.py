"""Check a command line before Hydra starts, so a typo fails in one line and creates nothing.

Hydra reports an unknown config-group option or key only after it has set up the run, as a
multi-line message. `check_command_line` composes the config of every job of the command
line first (for a multirun: every swept value once) and, for a single run, also validates the
values (aevb.config.Settings). In a multirun, bad *values* are left to the job that has them,
so one bad point of a sweep fails alone and the others run.

`app_help` answers `--help` with Hydra's own text, without Hydra's cost: Hydra lists the config
groups through one copy of its whole config repository per group and option kind (seconds);
the application's groups are the folders of its config dir, listed directly.
"""

from __future__ import annotations

import copy
import difflib
import string
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, flag_override
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from aevb.errors import ConfigError, one_line

#: Hydra flags that print something instead of running a job: nothing to check
_INFO_FLAGS = ("help", "hydra_help", "info", "shell_completion", "experimental_rerun")


def check_command_line(
    argv: Sequence[str],
    config_dir: str,
    config_name: str,
    validate: Callable[[DictConfig], object] | None = None,
) -> str | None:
    """The first problem of `argv` as one line, or None if every job's config composes.

    `validate(cfg)` (raising ConfigError / ValueError) runs on a single run's config.
    """
    args, _ = get_args_parser().parse_known_args(list(argv))
    if any(getattr(args, flag, None) for flag in _INFO_FLAGS):
        return None
    if args.config_path or args.config_dir or args.config_name:
        return None  # a different config tree: leave it to Hydra
    overrides = list(args.overrides)
    jobs = _jobs(overrides) if args.multirun else [overrides]
    with initialize_config_dir(config_dir, version_base="1.3", job_name="preflight"):
        for job in jobs:
            try:
                cfg = compose(config_name, job, return_hydra_config=True)
            except (HydraException, OmegaConfBaseException) as err:
                return _composition_error(err, job, config_name)
            try:  # the launcher's values, e.g. SLURM resources that follow trainer.devices
                OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
            except OmegaConfBaseException as err:
                return one_line(err, first_line=True).removeprefix(
                    "ConfigError raised while resolving interpolation: "
                )
            if validate is not None and not args.multirun and not args.cfg:
                try:
                    validate(cfg)
                except OmegaConfBaseException as err:  # e.g. a resolver's error: its first line
                    return one_line(err, first_line=True)
                except (ConfigError, ValueError) as err:
                    return str(err)
    return None


def app_help(argv: Sequence[str], config_dir: str, config_name: str, task_name: str) -> str | None:
    """Hydra's `--help` text for `argv` (the same text), or None: not asked for, or a case left
    to Hydra (another config tree, an extra search path, a template with Hydra's own groups or
    flags, a command line that does not compose)."""
    args, _ = get_args_parser().parse_known_args(list(argv))
    if not args.help or args.config_path or args.config_dir or args.config_name:
        return None
    try:
        with initialize_config_dir(config_dir, version_base="1.3", job_name=task_name):
            cfg = compose(config_name, list(args.overrides), return_hydra_config=True)
        template = string.Template(cfg.hydra.help.template)
    except (HydraException, OmegaConfBaseException):
        return None
    if cfg.hydra.searchpath or set(template.get_identifiers()) - {"APP_CONFIG_GROUPS", "CONFIG"}:
        return None
    HydraConfig.instance().set_config(cfg)  # as Hydra's app help: ${hydra:...} resolves
    job = copy.deepcopy(cfg)  # the job's config only
    with flag_override(job, ["struct", "readonly"], [False, False]):
        del job["hydra"]
    return template.substitute(
        APP_CONFIG_GROUPS=_app_config_groups(Path(config_dir)),
        CONFIG=OmegaConf.to_yaml(job, resolve=args.resolve),
    )


def _app_config_groups(root: Path) -> str:
    """`group: option, ...` lines of every folder below `root` (but hydra/) that holds configs,
    as Hydra's help lists them."""
    lines = []
    groups = (d.relative_to(root).as_posix() for d in root.rglob("*") if d.is_dir())
    for group in sorted(g for g in groups if g.split("/")[0] != "hydra"):
        if "__pycache__" in group.split("/"):
            continue
        options = sorted({f.stem for f in (root / group).glob("*.yaml") if f.is_file()})
        if options:
            lines.append(f"{group}: {', '.join(options)}\n")
    return "".join(lines)


def _jobs(overrides: list[str]) -> list[list[str]]:
    """One override list per swept value (others at their first value), not the product."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        sweeps = [o for o in parsed if o.is_sweep_override()]
        if not sweeps:
            return [overrides]
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        values = {
            o.input_line: [j[0] for j in BasicSweeper.split_arguments([o], None)[0]] for o in sweeps
        }
    except Exception:  # noqa: BLE001 -- a sweeper-specific syntax (e.g. Optuna's): check the rest
        return [[o for o in overrides if "," not in o and "(" not in o]]
    first = [v[0] for v in values.values()]
    jobs = [fixed + first]
    for i, options in enumerate(values.values()):
        for value in options[1:]:
            jobs.append(fixed + first[:i] + [value] + first[i + 1 :])
    return jobs


def _composition_error(err: Exception, job: list[str], config_name: str) -> str:
    """Hydra's multi-line composition errors, rewritten as one line naming key and choices."""
    if isinstance(err, MissingConfigException) and err.options:
        group = (err.missing_cfg_file or "").split("/")[0]
        chosen = next(
            (o.split("=", 1)[1] for o in job if o.lstrip("+~").startswith(f"{group}=")), "?"
        )
        choices = ", ".join(sorted(err.options))
        return f"{group}={chosen} is not a config option; choose one of: {choices}"
    missing_key = (ConfigKeyError, ConfigAttributeError)
    cause = err.__cause__ if isinstance(err.__cause__, missing_key) else err
    if isinstance(cause, missing_key) and cause.full_key:
        key = cause.full_key
        parent, _, leaf = key.rpartition(".")
        known = _keys_of(parent, job, config_name)
        hint = difflib.get_close_matches(leaf, known, n=1)
        did_you_mean = f"did you mean {parent + '.' if parent else ''}{hint[0]}? " if hint else ""
        return (
            f"{key} is not a config key; {did_you_mean}"
            f"{parent or 'the config'} has: {', '.join(known)} (add a new key with +{key}=...)"
        )
    return one_line(err)


def _keys_of(parent: str, job: list[str], config_name: str) -> list[str]:
    """Keys under `parent` in the config composed without the offending overrides."""
    try:
        cfg = compose(config_name, [o for o in job if "=" in o and "." not in o.split("=")[0]])
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return [str(k) for k in node] if isinstance(node, DictConfig) else []
    except Exception:  # noqa: BLE001 -- only a hint
        return []
