"""Config schema: what each config group may hold and which values are allowed.

The YAML files under conf/ hold the defaults; these dataclasses hold the rules. `Settings`
checks a composed config before any work starts and raises `ConfigError` with one line naming
the key and what is allowed. The allowed names come from `aevb.registry`, so importing this
module imports neither torch nor the models; checking a choice's keyword arguments (likelihood,
lr_schedule) imports its builder.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aevb.errors import ConfigError
from aevb.registry import (
    ACTIVATIONS,
    ALGORITHMS,
    ARCHITECTURES,
    BINARIZE,
    DATASETS,
    EPOCH_ONLY,
    INTERVALS,
    KL_ESTIMATORS,
    LIKELIHOODS,
    LR_SCHEDULES,
    MARGINALS,
    OPTIMIZERS,
)


def lookup(table: DictConfig, key: str) -> Any:
    """Resolver `${aevb.lookup:TABLE,KEY}`: TABLE[KEY], e.g. a recipe's step size per algorithm
    and Nz (`${aevb.lookup:${paper_step_size.${model.algorithm}},nz${model.latent_dim}}`)."""
    if key not in table:
        where = table._get_full_key(None)
        raise KeyError(f"no entry {key} in {where} (has {', '.join(table)}); set optim.lr")
    return table[key]


OmegaConf.register_new_resolver("aevb.lookup", lookup, replace=True)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _require(ok: bool, key: str, allowed: str, got: Any) -> None:
    if not ok:
        raise ConfigError(key, allowed, got)


def _choice(value: Any, key: str, options: Any) -> None:
    _require(value in options, key, f"one of {sorted(options)}", value)


def budget_steps(
    budget_samples: Any, batch_size: int, num_train: int | None = None, world_size: int = 1
) -> int:
    """Optimisation steps that evaluate at least `budget_samples` training samples (the paper's
    x-axis), counted over all W = `world_size` ranks (as `samples_seen`): a step trains M x W.
    Each rank's epoch is a shard of n = N // W images (the remainder is dropped), so with N
    known and M not dividing n every epoch ends with a partial step; otherwise ceil(B / (M W)).
    """
    b = budget_samples
    ok = _is_real(b) and b >= 1 and float(b).is_integer()
    _require(ok, "budget_samples", "null or a whole number of training samples >= 1", b)
    b = int(b)
    shard = num_train // world_size if num_train else 0
    if not shard or shard % batch_size == 0:
        return math.ceil(b / (batch_size * world_size))
    epochs, rest = divmod(b, shard * world_size)
    return epochs * math.ceil(shard / batch_size) + math.ceil(rest / (batch_size * world_size))


@dataclass(frozen=True)
class DataConfig:
    name: str
    root: str
    download: bool
    batch_size: int
    eval_batch_size: int
    val_size: int
    num_train: int | None
    seed: int
    binarize: str

    def __post_init__(self) -> None:
        _choice(self.name, "data.name", DATASETS)
        _choice(self.binarize, "data.binarize", (*BINARIZE, "auto"))
        _require(isinstance(self.download, bool), "data.download", "true or false", self.download)
        for key in ("batch_size", "eval_batch_size"):
            v = getattr(self, key)
            _require(_is_int(v) and v > 0, f"data.{key}", "an integer > 0", v)
        _require(
            _is_int(self.val_size) and self.val_size >= 0,
            "data.val_size",
            "an integer >= 0",
            self.val_size,
        )
        n = self.num_train
        _require(n is None or (_is_int(n) and n > 0), "data.num_train", "null or an integer > 0", n)
        _require(_is_int(self.seed), "data.seed", "an integer", self.seed)


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    latent_dim: int
    hidden_dims: list[int]
    activation: str
    beta: float
    samples: int
    kl: str
    init_std: float | None = None
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kl_warmup_steps: int = 0
    kl_cycle_steps: int = 0
    free_bits: float = 0.0
    algorithm: str = "aevb"  #: aevb (aevb.vae.VAE) | wake_sleep | mcem (aevb.mcem.MonteCarloEM)
    mcem: dict[str, Any] | None = None  #: MCEMConfig's keys (model.algorithm=mcem only)

    def __post_init__(self) -> None:
        _choice(self.architecture, "model.architecture", ARCHITECTURES)
        _choice(self.algorithm, "model.algorithm", ALGORITHMS)
        if self.algorithm in ("wake_sleep", "mcem"):  # their losses have no KL weight to shape
            offs = [("beta", 1.0), ("kl_warmup_steps", 0), ("free_bits", 0.0)]
            for key, off in offs + ([("samples", 1)] if self.algorithm == "mcem" else []):
                v = getattr(self, key)
                _require(
                    v == off, f"model.{key}", f"{off} with model.algorithm={self.algorithm}", v
                )
        self.mcem_config()  # validates model.mcem
        ch = self.channels
        _require(
            isinstance(ch, list) and len(ch) > 0 and all(_is_int(c) and c > 0 for c in ch),
            "model.channels",
            "a non-empty list of integers > 0",
            ch,
        )
        w, c = self.kl_warmup_steps, self.kl_cycle_steps
        _require(_is_int(w) and w >= 0, "model.kl_warmup_steps", "an integer >= 0", w)
        _require(
            _is_int(c) and (c == 0 or (w > 0 and c >= w)),
            "model.kl_cycle_steps",
            "0 or an integer >= model.kl_warmup_steps > 0",
            c,
        )
        fb = self.free_bits
        _require(_is_real(fb) and fb >= 0, "model.free_bits", "a finite number >= 0 (nats)", fb)
        _require(
            _is_int(self.latent_dim) and self.latent_dim > 0,
            "model.latent_dim",
            "an integer > 0",
            self.latent_dim,
        )
        dims = self.hidden_dims
        _require(
            isinstance(dims, list) and all(_is_int(d) and d > 0 for d in dims),
            "model.hidden_dims",
            "a list of integers > 0",
            dims,
        )
        _choice(self.activation, "model.activation", ACTIVATIONS)
        _require(
            _is_real(self.beta) and self.beta >= 0, "model.beta", "a finite number >= 0", self.beta
        )
        _require(
            _is_int(self.samples) and self.samples > 0,
            "model.samples",
            "an integer >= 1",
            self.samples,
        )
        _choice(self.kl, "model.kl", KL_ESTIMATORS)
        s = self.init_std
        _require(s is None or (_is_real(s) and s > 0), "model.init_std", "null or a number > 0", s)

    def mcem_config(self) -> MCEMConfig:
        """The validated `model.mcem` block (defaults: the paper's Appendix E values)."""
        mcem = self.mcem if self.mcem is not None else {}
        _require(isinstance(mcem, dict), "model.mcem", "a mapping of MCEM settings", mcem)
        return _build(MCEMConfig, "model.mcem", mcem)


@dataclass(frozen=True)
class MCEMConfig:
    """`model.mcem`: Monte Carlo EM (aevb.mcem.MonteCarloEM; docs/reproduction.md, Figure 3).

    leapfrog_steps, target_accept: of each HMC proposal (Appendix E: 10, 0.9); step_size: the
    first chains' leapfrog step; adapt_rate: kappa of log eps += kappa (acceptance - target);
    proposals: per visit of a datapoint; burn_in: extra proposals on a chain's first visit; updates:
    optimiser steps per minibatch (Appendix E: 5); persistent: chains continue across visits;
    candidates: prior draws a new chain starts from the best of; eval_points: val/test images
    of the Appendix D estimate MCEM logs (it has no bound).
    """

    leapfrog_steps: int = 10
    target_accept: float = 0.9
    step_size: float = 0.05
    adapt_rate: float = 0.05
    proposals: int = 1
    burn_in: int = 20
    updates: int = 5
    persistent: bool = True
    candidates: int = 64
    eval_points: int = 100

    def __post_init__(self) -> None:
        for key in ("leapfrog_steps", "proposals", "updates", "candidates"):
            v = getattr(self, key)
            _require(_is_int(v) and v >= 1, f"model.mcem.{key}", "an integer >= 1", v)
        for key in ("burn_in", "eval_points"):
            v = getattr(self, key)
            _require(_is_int(v) and v >= 0, f"model.mcem.{key}", "an integer >= 0", v)
        a = self.target_accept
        _require(_is_real(a) and 0 < a < 1, "model.mcem.target_accept", "a number in (0, 1)", a)
        for key in ("step_size", "adapt_rate"):
            v = getattr(self, key)
            _require(_is_real(v) and v > 0, f"model.mcem.{key}", "a finite number > 0", v)
        p = self.persistent
        _require(isinstance(p, bool), "model.mcem.persistent", "true or false", p)


@dataclass(frozen=True)
class OptimConfig:
    """prior_std: a N(0, prior_std^2 I) prior on every parameter (the paper's approximate MAP,
    "small weight decay"): adds weight_decay = 1 / (N_train * prior_std^2) to the per-datapoint
    loss's gradient, the gradient of -log p(theta) / N. null = off."""

    name: str
    lr: float
    weight_decay: float
    prior_std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice(self.name, "optim.name", OPTIMIZERS)
        _require(_is_real(self.lr) and self.lr > 0, "optim.lr", "a finite number > 0", self.lr)
        wd = self.weight_decay
        _require(_is_real(wd) and wd >= 0, "optim.weight_decay", "a finite number >= 0", wd)
        ps = self.prior_std
        _require(ps is None or (_is_real(ps) and ps > 0), "optim.prior_std", "null or > 0", ps)

    def kwargs(self, num_train: int | None = None) -> dict[str, Any]:
        """Optimiser keyword arguments; `num_train` (N) is needed when prior_std is set."""
        wd = self.weight_decay
        if self.prior_std is not None:
            if not num_train:
                raise ValueError("optim.prior_std needs the training-set size")
            wd += 1.0 / (num_train * self.prior_std**2)
        return {"name": self.name, "lr": self.lr, "weight_decay": wd, **self.extra}


def _is_milestones(v: Any) -> bool:
    ok = isinstance(v, list) and len(v) > 0 and all(_is_int(m) and m >= 1 for m in v)
    return ok and all(a < b for a, b in zip(v, v[1:], strict=False))


#: lr_schedule keys (the builders' keyword arguments): what each may hold
_SCHEDULE_RULES: dict[str, tuple[Any, str]] = {
    "milestones": (_is_milestones, "a non-empty increasing list of integers >= 1"),
    "gamma": (lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]"),
    "t_max": (lambda v: v is None or (_is_int(v) and v >= 1), "null (the run) or an integer >= 1"),
    "eta_min": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    "stages": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "factor": (lambda v: _is_real(v) and 0 < v < 1, "a number in (0, 1)"),
    "patience": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "threshold": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
    "threshold_mode": (lambda v: v in ("rel", "abs"), "one of ['abs', 'rel']"),
    "cooldown": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "min_lr": (lambda v: _is_real(v) and v >= 0, "a finite number >= 0"),
}


@dataclass(frozen=True)
class LRScheduleConfig:
    """`lr_schedule`: lr_t = optim.lr * f(t), t counted in `interval`s (epoch | step); the
    other keys are the keyword arguments of the builder `aevb.lr_schedules.LR_SCHEDULES[name]`."""

    name: str = "none"
    interval: str = "epoch"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice(self.name, "lr_schedule.name", LR_SCHEDULES)
        intervals = ("epoch",) if self.name in EPOCH_ONLY else INTERVALS
        _choice(self.interval, "lr_schedule.interval", intervals)
        keys = LR_SCHEDULES.keywords(self.name, skip=1)  # the builder's, after the optimizer
        for key, value in self.extra.items():
            allowed = f"one of the keys of lr_schedule={self.name} {sorted(keys)}"
            _require(key in keys, f"lr_schedule.{key}", allowed, "unknown key")
            ok, allowed = _SCHEDULE_RULES[key]
            _require(ok(value), f"lr_schedule.{key}", allowed, value)
        for key, required in keys.items():
            _require(not required or key in self.extra, f"lr_schedule.{key}", "set", "missing")

    def kwargs(self) -> dict[str, Any] | None:
        """`VAE(lr_schedule=...)`: {"name", "interval", **keys}, or None for a constant lr."""
        if self.name == "none":
            return None
        return {"name": self.name, "interval": self.interval, **self.extra}


@dataclass(frozen=True)
class LikelihoodConfig:
    name: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice(self.name, "likelihood.name", LIKELIHOODS)
        try:  # constructing it checks its keyword arguments and values
            LIKELIHOODS[self.name](data_shape=(1, 4, 4), **self.extra)
        except TypeError as err:  # an unknown or missing keyword argument
            raise ConfigError("likelihood", "valid", f"likelihood={self.name}: {err}") from err
        except ValueError as err:
            raise ConfigError("likelihood", "valid", str(err)) from err

    def kwargs(self) -> dict[str, Any]:
        return {"name": self.name, **self.extra}


@dataclass(frozen=True)
class EvalConfig:
    """`eval`: test-time metrics. iw_samples = k of test/nll (0 = skip the importance-weighted
    metrics); iwae_ks = k of the test/iwae_k{K} bounds (share the draws, so each <= iw_samples);
    iw_chunk = decoder rows per pass (null = per-device default); seed of the draws.
    marginal = hmc adds test/nll_hmc, the Appendix D estimate on the first hmc_points test
    images (aevb-eval only; aevb.marginal_curve)."""

    iw_samples: int = 100
    iw_chunk: int | None = None
    iwae_ks: list[int] = field(default_factory=lambda: [1, 5, 50])
    seed: int = 0
    marginal: str = "none"
    hmc_points: int = 1000

    def __post_init__(self) -> None:
        k = self.iw_samples
        _require(_is_int(k) and k >= 0, "eval.iw_samples", "an integer >= 0", k)
        c = self.iw_chunk
        _require(c is None or (_is_int(c) and c > 0), "eval.iw_chunk", "null or an integer > 0", c)
        ks = self.iwae_ks
        _require(
            isinstance(ks, list) and all(_is_int(v) and 1 <= v <= max(k, 1) for v in ks),
            "eval.iwae_ks",
            f"a list of integers in [1, eval.iw_samples={k}]" if k else "[] when iw_samples=0",
            ks,
        )
        _require(not ks or k > 0, "eval.iwae_ks", "[] when eval.iw_samples=0", ks)
        _require(_is_int(self.seed), "eval.seed", "an integer", self.seed)
        _choice(self.marginal, "eval.marginal", MARGINALS)
        n = self.hmc_points
        _require(_is_int(n) and n >= 1, "eval.hmc_points", "an integer >= 1", n)

    def test_evaluation(self) -> dict[str, Any]:
        """The keyword arguments of `aevb.epoch_metrics.EvaluationSettings` (what a test epoch
        computes)."""
        return {
            "iw_samples": self.iw_samples,
            "iwae_ks": tuple(self.iwae_ks),
            "chunk": self.iw_chunk,
            "seed": self.seed,
        }


def _build(cls: type, group: str, values: dict[str, Any]) -> Any:
    names = [f.name for f in dataclasses.fields(cls)]
    if "extra" in names:
        fixed = {k: v for k, v in values.items() if k in names}
        return cls(**fixed, extra={k: v for k, v in values.items() if k not in names})
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{group}.{unknown[0]}", f"one of the known keys {names}", "unknown key")
    missing = [
        n
        for n in names
        if n not in values and cls.__dataclass_fields__[n].default is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{group}.{missing[0]}", "set", "missing")
    return cls(**values)


@dataclass(frozen=True)
class Settings:
    """The validated, typed view of a composed training config."""

    data: DataConfig
    model: ModelConfig
    likelihood: LikelihoodConfig
    optim: OptimConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Settings:
        def group(name: str) -> dict[str, Any]:
            node = cfg.get(name)
            if node is None:
                raise ConfigError(name, "a config group", None)
            return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]

        # torch-free checks first (a typo is refused before torch loads), then the likelihood's:
        # constructing it and reading its support import torch
        model = _build(ModelConfig, "model", group("model"))
        data = _build(DataConfig, "data", group("data"))
        likelihood = _build(LikelihoodConfig, "likelihood", group("likelihood"))
        if (
            data.binarize == "auto"
        ):  # binary likelihoods get dynamic binarization, others grey levels
            support = LIKELIHOODS[likelihood.name].support
            data = dataclasses.replace(data, binarize="dynamic" if support == "binary" else "none")
        if (
            LIKELIHOODS[likelihood.name].support == "binary"
            and data.binarize == "none"
            and not likelihood.extra.get("allow_nonbinary", False)
        ):
            raise ConfigError(
                "data.binarize",
                f"dynamic or static for likelihood={likelihood.name} (binary data), or set "
                "likelihood.allow_nonbinary=true to fit grey levels with a cross-entropy",
                data.binarize,
            )
        schedule = (  # absent from the configs of runs made before the group existed
            _build(LRScheduleConfig, "lr_schedule", group("lr_schedule"))
            if "lr_schedule" in cfg
            else LRScheduleConfig()
        )
        if model.algorithm == "mcem" and schedule.name != "none":
            raise ConfigError(
                "lr_schedule",
                "none for model.algorithm=mcem (it takes its Adagrad steps inside training_step)",
                schedule.name,
            )
        return cls(
            data=data,
            model=model,
            likelihood=likelihood,
            optim=_build(OptimConfig, "optim", group("optim")),
            eval=_build(EvalConfig, "eval", group("eval")) if "eval" in cfg else EvalConfig(),
            lr_schedule=schedule,
        )

    def datamodule_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self.data)

    def model_kwargs(
        self, data_shape: tuple[int, ...], num_train: int | None = None
    ) -> dict[str, Any]:
        """Constructor arguments of `aevb.registry.ALGORITHMS[model.algorithm]`."""
        skip = {"algorithm", "mcem"}
        if self.model.algorithm == "mcem":  # no encoder, no bound: no ELBO settings
            skip |= {"beta", "samples", "kl", "kl_warmup_steps", "kl_cycle_steps", "free_bits"}
        model = {k: v for k, v in dataclasses.asdict(self.model).items() if k not in skip}
        if self.model.algorithm == "mcem":
            model.update(num_train=num_train, **dataclasses.asdict(self.model.mcem_config()))
        kwargs = {
            "data_shape": tuple(data_shape),
            **model,
            "likelihood": self.likelihood.kwargs(),
            "optim": self.optim.kwargs(num_train),
        }
        if self.model.algorithm != "mcem":  # MCEM: no schedule (it steps its optimiser itself)
            kwargs["lr_schedule"] = self.lr_schedule.kwargs()  # and no test/nll (no encoder)
            kwargs["evaluation"] = self.eval.test_evaluation()  # EvaluationSettings' kwargs
        return kwargs

    def hparams(self) -> dict[str, Any]:
        """Flat hyperparameters that identify a run (HParams table, metrics.json)."""
        flat = {
            "data": self.data.name,
            "binarize": self.data.binarize,
            "batch_size": self.data.batch_size,
            "num_train": self.data.num_train,
            "likelihood": self.likelihood.name,
            **{f"likelihood.{k}": v for k, v in self.likelihood.extra.items()},
            "optim": self.optim.name,
            "lr": self.optim.lr,
            "weight_decay": self.optim.weight_decay,
            "prior_std": self.optim.prior_std,
            "lr_schedule": self.lr_schedule.name,
        }
        model = dataclasses.asdict(self.model)
        flat.update({k: v for k, v in model.items() if k not in ("hidden_dims", "mcem")})
        if self.model.algorithm == "mcem":
            mcem = dataclasses.asdict(self.model.mcem_config())
            flat.update({f"mcem.{k}": v for k, v in mcem.items()})
        flat["hidden_dims"] = "-".join(map(str, self.model.hidden_dims))
        return flat
