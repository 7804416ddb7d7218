"""Observation models p(x|z): decoder output -> a torch.distributions Distribution over images.

Every likelihood returns a distribution whose event shape is the image shape [C, H, W], so
`log_prob(x)` is already summed over pixels (nats per datapoint). Adding one = one small class
registered in `aevb.registry.LIKELIHOODS`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli as _Bernoulli
from torch.distributions import ContinuousBernoulli as _ContinuousBernoulli
from torch.distributions import Distribution, Independent, Normal
from torch.distributions import Laplace as _Laplace

from aevb.registry import LIKELIHOODS

#: log-variance range of learned / predicted Gaussian scales: sigma in [e^-4.5, e^2] ~ [0.011, 7.4]
LOGVAR_MIN, LOGVAR_MAX = -9.0, 4.0


class Likelihood(nn.Module):
    """Base class: `params_per_pixel` decoder outputs per pixel -> p(x|z) with event = image."""

    params_per_pixel: int = 1
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

    def z_ignored(self, x: Tensor) -> Distribution | None:
        """The maximum-likelihood p(x) of this family with parameters that do not depend on z,
        fitted to images x [N, C, H, W]: the best model that ignores z (q(z|x) = p(z), KL = 0),
        so its log-likelihood is the bound such a VAE reaches. None where no closed form."""
        return None

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
    """Bernoulli pixels from logits: log p(x|z) = -BCE-with-logits, summed over pixels.

    `allow_nonbinary=True` accepts grey levels (the common "BCE on grey images" objective): the
    value is then a cross-entropy, not a log-density, and not comparable as an NLL.
    """

    support = "binary"

    def __init__(self, data_shape: tuple[int, ...] = (1, 28, 28), allow_nonbinary: bool = False):
        super().__init__(data_shape)
        self.allow_nonbinary = allow_nonbinary

    def forward(self, params: Tensor) -> Distribution:
        logits = params.squeeze(-4)
        return Independent(_Bernoulli(logits=logits, validate_args=False), 3)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params.squeeze(-4))

    def z_ignored(self, x: Tensor) -> Distribution:
        """Independent Bernoulli pixels at the mean grey level (dynamic binarization's mean)."""
        probs = x.mean(0).clamp(1e-6, 1 - 1e-6)
        return Independent(_Bernoulli(probs=probs, validate_args=False), 3)

    def check_data(self, x: Tensor) -> None:
        if not self.allow_nonbinary:
            super().check_data(x)


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a normalised density on [0, 1].

    log p(x|lambda) = x log lambda + (1-x) log(1-lambda) + log C(lambda), i.e. the BCE plus the
    log-normaliser C(lambda) = 2 artanh(1-2 lambda) / (1-2 lambda) that BCE on grey levels omits.
    """

    support = "unit"

    def forward(self, params: Tensor) -> Distribution:
        return Independent(_ContinuousBernoulli(logits=params.squeeze(-4), validate_args=False), 3)

    def mean(self, params: Tensor) -> Tensor:
        return self(params).mean.clamp(0, 1)


class _LocationScale(Likelihood):
    """Normal or Laplace pixels with mean sigmoid(decoder output) (data live in [0, 1]).

    scale_mode: "fixed" (the constant `scale`), "global" (one learned scalar), "pixel" (one
    learned scale per pixel) or "decoder" (predicted per pixel: the decoder emits 2 values per
    pixel, the mean's pre-activation and the log-variance, which is linear as in the paper's
    Frey Face decoder). Learned log-variances are clamped to [LOGVAR_MIN, LOGVAR_MAX].
    """

    family: ClassVar[type[Distribution]]
    SCALE_MODES: ClassVar[tuple[str, ...]] = ("fixed", "global", "pixel", "decoder")

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 28, 28),
        scale: float = 1.0,
        scale_mode: str = "fixed",
    ) -> None:
        super().__init__(data_shape)
        if scale_mode not in self.SCALE_MODES:
            raise ValueError(
                f"likelihood scale mode must be one of {self.SCALE_MODES}, got {scale_mode!r}"
            )
        if not scale > 0:
            raise ValueError(f"likelihood scale must be > 0, got {scale!r}")
        self.scale_mode = scale_mode
        self.params_per_pixel = 2 if scale_mode == "decoder" else 1
        init = torch.tensor(float(scale)).log()
        if scale_mode == "global":
            self.log_scale = nn.Parameter(init.clone())
        elif scale_mode == "pixel":
            self.log_scale = nn.Parameter(init.expand(self.data_shape).clone())
        else:
            self.register_buffer("log_scale", init.clone(), persistent=False)

    def _scale(self, params: Tensor) -> Tensor:
        if self.scale_mode == "decoder":
            logvar = params[..., 1, :, :, :].clamp(LOGVAR_MIN, LOGVAR_MAX)
            return torch.exp(0.5 * logvar)
        if self.scale_mode == "fixed":
            return self.log_scale.exp()
        return torch.exp(self.log_scale.clamp(0.5 * LOGVAR_MIN, 0.5 * LOGVAR_MAX))

    def forward(self, params: Tensor) -> Distribution:
        loc = torch.sigmoid(params[..., 0, :, :, :])
        scale = self._scale(params).expand_as(loc)
        return Independent(self.family(loc, scale, validate_args=False), 3)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params[..., 0, :, :, :])

    def z_ignored(self, x: Tensor) -> Distribution:
        """Per-pixel ML location (mean, or median for Laplace) and scale (fixed, one global or
        one per pixel as `scale_mode` allows), scales clamped as the model clamps them."""
        x = x.double()
        loc = x.median(0).values if self.family is _Laplace else x.mean(0)
        dev = (x - loc).abs() if self.family is _Laplace else (x - loc) ** 2  # ML b or sigma^2
        if self.scale_mode == "fixed":
            scale = self.log_scale.double().exp().expand_as(loc)
        else:
            spread = dev.mean() if self.scale_mode == "global" else dev.mean(0)
            if self.family is Normal:
                spread = spread.clamp(math.exp(LOGVAR_MIN), math.exp(LOGVAR_MAX)).sqrt()
            else:
                spread = spread.clamp(math.exp(0.5 * LOGVAR_MIN), math.exp(0.5 * LOGVAR_MAX))
            scale = spread.expand_as(loc)
        return Independent(self.family(loc, scale, validate_args=False), 3)


class Gaussian(_LocationScale):
    """N(x; mu(z), sigma^2) per pixel with a fixed sigma (`likelihood.sigma`, default 1).

    -log p = ||x - mu||^2 / (2 sigma^2) + (pixels/2) log(2 pi sigma^2): the "MSE" loss scaled
    by 1/(2 sigma^2), with its normalising constant so ELBOs are in nats.
    """

    family = Normal

    def __init__(self, data_shape: tuple[int, ...] = (1, 28, 28), sigma: float = 1.0) -> None:
        super().__init__(data_shape, scale=sigma, scale_mode="fixed")


class GaussianLearned(_LocationScale):
    """Gaussian with learned sigma: `sigma_mode` global | pixel | decoder (the paper's Frey Face).

    `init_sigma` starts the learned scale (global/pixel modes).
    """

    family = Normal

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 28, 28),
        sigma_mode: str = "global",
        init_sigma: float = 1.0,
    ) -> None:
        if sigma_mode not in ("global", "pixel", "decoder"):
            raise ValueError(
                "likelihood.sigma_mode must be one of ('global', 'pixel', 'decoder'), "
                f"got {sigma_mode!r}"
            )
        super().__init__(data_shape, scale=init_sigma, scale_mode=sigma_mode)


class Laplace(_LocationScale):
    """Laplace(x; mu(z), b) per pixel: -log p = |x - mu| / b + pixels * log(2b) (the "L1" loss).

    `scale_mode` fixed (b = `scale`) | global | pixel | decoder (decoder output is log b^2).
    """

    family = _Laplace

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 28, 28),
        scale: float = 0.1,
        scale_mode: str = "fixed",
    ) -> None:
        super().__init__(data_shape, scale=scale, scale_mode=scale_mode)


def build_likelihood(name: str, data_shape: tuple[int, ...], **kwargs: object) -> Likelihood:
    """The likelihood registered as `name`, constructed for images of `data_shape`."""
    cls = LIKELIHOODS[name]  # a ConfigError (ValueError) naming the registered ones
    try:
        return cls(data_shape=data_shape, **kwargs)
    except TypeError as err:
        raise ValueError(f"likelihood={name}: {err}") from err
