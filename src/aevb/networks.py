"""Encoder and decoder networks. Pure torch: shapes in, tensors out, no probability."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}
ARCHITECTURES = ("mlp",)


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
        self, data_shape: Sequence[int], hidden_dims: Sequence[int], latent_dim: int, activation: str
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


def build_networks(
    architecture: str,
    data_shape: Sequence[int],
    latent_dim: int,
    hidden_dims: Sequence[int],
    activation: str,
    params_per_pixel: int,
) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair for `architecture`; the decoder mirrors the encoder's widths."""
    if architecture == "mlp":
        encoder = MLPEncoder(data_shape, hidden_dims, latent_dim, activation)
        decoder = MLPDecoder(
            latent_dim, list(reversed(hidden_dims)), data_shape, params_per_pixel, activation
        )
        return encoder, decoder
    raise ValueError(f"model.architecture must be one of {ARCHITECTURES}, got {architecture!r}")


@torch.no_grad()
def init_normal_(module: nn.Module, std: float) -> None:
    """Draw every weight and bias from N(0, std^2), as in the paper's appendix (std 0.01)."""
    for p in module.parameters():
        p.normal_(0.0, std)
