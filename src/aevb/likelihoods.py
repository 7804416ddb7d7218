"""Observation models p(x|z): decoder output -> a torch.distributions Distribution over images.

Every likelihood returns a distribution whose event shape is the image shape [C, H, W], so
`log_prob(x)` is already summed over pixels (nats per datapoint). Adding one = one small class
registered in LIKELIHOODS.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli as _Bernoulli
from torch.distributions import Distribution, Independent


class Likelihood(nn.Module):
    """Base class: `params_per_pixel` decoder outputs per pixel -> p(x|z) with event = image."""

    params_per_pixel: ClassVar[int] = 1
    #: which data the density is valid for: "binary" ({0,1}), "unit" ([0,1]) or "real".
    support: ClassVar[str] = "real"

    def __init__(self, data_shape: tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)

    def forward(self, params: Tensor) -> Distribution:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z] in image space (what image grids show)."""
        return self(params).mean

    def check_data(self, x: Tensor) -> None:
        """Refuse data outside the density's support with a one-line ValueError."""
        name = type(self).__name__.lower()
        if self.support == "binary" and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                f"likelihood={name} needs binary data in {{0,1}}, got grey levels; "
                "set data.binarize=dynamic|static or pick a likelihood for grey levels"
            )
        if self.support == "unit" and not bool(((x >= 0) & (x <= 1)).all()):
            raise ValueError(f"likelihood={name} needs data in [0,1]")


class Bernoulli(Likelihood):
    """Bernoulli pixels from logits: log p(x|z) = -BCE-with-logits, summed over pixels."""

    support = "binary"

    def forward(self, params: Tensor) -> Distribution:
        logits = params.squeeze(-4)
        return Independent(_Bernoulli(logits=logits, validate_args=False), 3)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params.squeeze(-4))


LIKELIHOODS: dict[str, type[Likelihood]] = {"bernoulli": Bernoulli}


def build_likelihood(name: str, data_shape: tuple[int, ...], **kwargs: object) -> Likelihood:
    """The likelihood registered as `name`, constructed for images of `data_shape`."""
    if name not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)}, got {name!r}")
    return LIKELIHOODS[name](data_shape=data_shape, **kwargs)
