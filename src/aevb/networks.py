"""Encoder and decoder networks. Pure torch: shapes in, tensors out, no probability."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from aevb.registry import ACTIVATIONS, ARCHITECTURES


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """x [B, C, H, W] -> (mean [B, D], log-variance [B, D]) of a diagonal Gaussian q(z|x)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        activation: str,
    ) -> None:
        super().__init__()
        n_in = math.prod(data_shape)
        self.body = _mlp([n_in, *hidden_dims], activation)
        self.act = ACTIVATIONS[activation]() if hidden_dims else nn.Identity()
        last = hidden_dims[-1] if hidden_dims else n_in
        self.head = nn.Linear(last, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.act(self.body(x.flatten(1)))
        mean, logvar = self.head(h).chunk(2, dim=-1)
        return mean, logvar


class MLPDecoder(nn.Module):
    """z [N, D] -> distribution parameters [N, P, C, H, W] (P parameters per pixel)."""

    def __init__(
        self,
        latent_dim: int,
        hidden_dims: Sequence[int],
        data_shape: Sequence[int],
        params_per_pixel: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.out_shape = (params_per_pixel, *data_shape)
        self.net = _mlp([latent_dim, *hidden_dims, math.prod(self.out_shape)], activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.out_shape)


class ConvEncoder(nn.Module):
    """x [B, C, H, W] -> (mean, logvar): stride-2 4x4 convolutions (H, W / 2 each), then an MLP.

    H and W must be divisible by 2**len(channels) (28x28 MNIST and 28x20 Frey Face with 2 layers).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        channels: Sequence[int],
        hidden_dims: Sequence[int],
        latent_dim: int,
        activation: str,
    ) -> None:
        super().__init__()
        c, h, w = data_shape
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), ACTIVATIONS[activation]()]
        self.conv = nn.Sequential(*layers, nn.Flatten())
        flat = channels[-1] * conv_grid(h, w, len(channels))
        self.mlp = MLPEncoder((flat,), hidden_dims, latent_dim, activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mlp(self.conv(x))


class ConvDecoder(nn.Module):
    """z [N, D] -> parameters [N, P, C, H, W]: an MLP, then stride-2 transposed convolutions."""

    def __init__(
        self,
        latent_dim: int,
        hidden_dims: Sequence[int],
        channels: Sequence[int],
        data_shape: Sequence[int],
        params_per_pixel: int,
        activation: str,
    ) -> None:
        super().__init__()
        c, h, w = data_shape
        n = len(channels)
        self.grid = (channels[0], h // 2**n, w // 2**n)
        self.mlp = _mlp([latent_dim, *hidden_dims, math.prod(self.grid)], activation)
        self.act = ACTIVATIONS[activation]()
        layers: list[nn.Module] = []
        outs = [*channels[1:], params_per_pixel * c]
        for i, (c_in, c_out) in enumerate(zip(channels, outs, strict=True)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < n - 1:
                layers.append(ACTIVATIONS[activation]())
        self.deconv = nn.Sequential(*layers)
        self.out_shape = (params_per_pixel, *data_shape)

    def forward(self, z: Tensor) -> Tensor:
        h = self.act(self.mlp(z)).view(-1, *self.grid)
        return self.deconv(h).view(-1, *self.out_shape)


def conv_grid(h: int, w: int, layers: int) -> int:
    """Cells of the feature map after `layers` stride-2 convolutions; checks divisibility."""
    f = 2**layers
    if h % f or w % f:
        raise ValueError(
            f"model=conv with {layers} conv layers needs image height and width divisible by {f}, "
            f"got {h}x{w}"
        )
    return (h // f) * (w // f)


@dataclass(frozen=True)
class NetworkSpec:
    """What an architecture (`aevb.registry.ARCHITECTURES`) builds its encoder and decoder from;
    the decoder mirrors the encoder's widths."""

    data_shape: Sequence[int]  #: image shape [C, H, W]
    latent_dim: int
    hidden_dims: Sequence[int]  #: encoder widths, first to last
    activation: str  #: `aevb.registry.ACTIVATIONS` name
    params_per_pixel: int  #: decoder outputs per pixel (the likelihood's parameters)
    channels: Sequence[int] = (32, 64)  #: conv feature maps per stride-2 layer (conv only)


def mlp_networks(spec: NetworkSpec) -> tuple[nn.Module, nn.Module]:
    """model.architecture=mlp: MLP encoder and decoder (`channels` unused)."""
    shape, d, act = spec.data_shape, spec.latent_dim, spec.activation
    encoder = MLPEncoder(shape, spec.hidden_dims, d, act)
    widths = list(reversed(spec.hidden_dims))
    return encoder, MLPDecoder(d, widths, shape, spec.params_per_pixel, act)


def conv_networks(spec: NetworkSpec) -> tuple[nn.Module, nn.Module]:
    """model.architecture=conv: strided convolutions (`channels`), then the MLP layers."""
    shape, d, act = spec.data_shape, spec.latent_dim, spec.activation
    encoder = ConvEncoder(shape, spec.channels, spec.hidden_dims, d, act)
    widths, back = list(reversed(spec.hidden_dims)), list(reversed(spec.channels))
    return encoder, ConvDecoder(d, widths, back, shape, spec.params_per_pixel, act)


def build_networks(architecture: str, spec: NetworkSpec) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair `aevb.registry.ARCHITECTURES[architecture]` builds."""
    return ARCHITECTURES[architecture](spec)


@torch.no_grad()
def init_normal_(module: nn.Module, std: float) -> None:
    """Draw every weight and bias from N(0, std^2), as in the paper's appendix (std 0.01)."""
    for p in module.parameters():
        p.normal_(0.0, std)
