"""Every choice a config key names, mapped to the code it builds: config key -> object in one hop.

Each registry maps a name (the value in the YAML, in checkpoint hparams and in result tables) to
`"module:attribute"`, imported when first looked up. So the config schema reads the allowed
names from here without importing torch, and `aevb.config` stays light (preflight refuses a bad
command line before torch loads). Adding a likelihood, dataset, architecture, algorithm,
optimiser or LR schedule = its code, one line here, one YAML file under conf/, one test.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from typing import Any

from aevb.errors import ConfigError


class Registry:
    """name -> builder, each written `"module:attribute"` and imported on lookup.

    `name in registry`, `sorted(registry)` and `len(registry)` import nothing; `registry[name]`
    imports the builder, or raises `ConfigError` naming `key` and every registered name.
    """

    def __init__(self, key: str, entries: dict[str, str]) -> None:
        self.key = key
        self.entries = dict(entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str) -> Any:
        if name not in self.entries:
            raise ConfigError(self.key, f"one of {sorted(self.entries)}", name)
        module, _, attribute = self.entries[name].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def keywords(self, name: str, skip: int = 0) -> dict[str, bool]:
        """The keyword arguments of `name`'s builder after the first `skip` positional ones,
        each mapped to whether it is required."""
        params = list(inspect.signature(self[name]).parameters.values())[skip:]
        return {p.name: p.default is inspect.Parameter.empty for p in params}

    def __repr__(self) -> str:
        return f"Registry({self.key!r}, {self.entries!r})"


#: model.algorithm -> LightningModule class (same constructor surface, `Settings.model_kwargs`)
ALGORITHMS = Registry(
    "model.algorithm",
    {
        "aevb": "aevb.vae:VAE",
        "wake_sleep": "aevb.wake_sleep:WakeSleep",
        "mcem": "aevb.mcem:MonteCarloEM",
    },
)

#: model.architecture -> builder(aevb.networks.NetworkSpec) -> (encoder, decoder)
ARCHITECTURES = Registry(
    "model.architecture",
    {"mlp": "aevb.networks:mlp_networks", "conv": "aevb.networks:conv_networks"},
)

#: model.activation -> nn.Module class of the hidden nonlinearity
ACTIVATIONS = Registry(
    "model.activation",
    {
        "relu": "torch.nn:ReLU",
        "tanh": "torch.nn:Tanh",
        "elu": "torch.nn:ELU",
        "gelu": "torch.nn:GELU",
        "silu": "torch.nn:SiLU",
        "softplus": "torch.nn:Softplus",
        "leaky_relu": "torch.nn:LeakyReLU",
    },
)

#: likelihood.name -> aevb.likelihoods.Likelihood subclass (the other likelihood.* keys are
#: its keyword arguments)
LIKELIHOODS = Registry(
    "likelihood.name",
    {
        "bernoulli": "aevb.likelihoods:Bernoulli",
        "continuous_bernoulli": "aevb.likelihoods:ContinuousBernoulli",
        "gaussian": "aevb.likelihoods:Gaussian",
        "gaussian_learned": "aevb.likelihoods:GaussianLearned",
        "laplace": "aevb.likelihoods:Laplace",
    },
)

#: data.name -> loader(root, download) -> ((train images, labels), (test images, labels))
DATASETS = Registry(
    "data.name",
    {
        "mnist": "aevb.data:load_mnist",
        "fashion_mnist": "aevb.data:load_fashion_mnist",
        "frey_face": "aevb.frey_face:load_splits",
    },
)

#: optim.name -> torch.optim.Optimizer class (the other optim.* keys: its keyword arguments)
OPTIMIZERS = Registry(
    "optim.name",
    {"adam": "torch.optim:Adam", "adagrad": "torch.optim:Adagrad", "sgd": "torch.optim:SGD"},
)

#: lr_schedule.name -> builder(optimizer, **keys) -> scheduler (None: constant lr); the
#: builder's keyword arguments are the keys `lr_schedule=<name>` takes
LR_SCHEDULES = Registry(
    "lr_schedule.name",
    {
        "none": "aevb.lr_schedules:none",
        "multistep": "aevb.lr_schedules:multistep",
        "exponential": "aevb.lr_schedules:exponential",
        "cosine": "aevb.lr_schedules:cosine",
        "iwae": "aevb.lr_schedules:iwae",
        "plateau": "aevb.lr_schedules:plateau",
    },
)
#: lr_schedule.interval: what t counts
INTERVALS = ("epoch", "step")
#: schedules whose t can only count epochs (iwae's stages are epochs; val/elbo is per epoch)
EPOCH_ONLY = frozenset({"iwae", "plateau"})

#: choices that select a code path rather than build an object
BINARIZE = ("none", "dynamic", "static")  #: data.binarize (or "auto": by the likelihood)
KL_ESTIMATORS = ("analytic", "mc")  #: model.kl: estimator B (eq. 10) or A (eq. 7)
#: compile.mode: eager (None) or a torch.compile mode (aevb.compiling)
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MARGINALS = ("none", "hmc")  #: eval.marginal: none, or the Appendix D estimate (test/nll_hmc)
