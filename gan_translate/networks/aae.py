"""Adversarial autoencoder networks (Makhzani et al. 2016): a convolutional encoder q(z | x) and a discriminator
on latent codes. The decoder is a ``DCGANGenerator`` (z[, one-hot y] -> image)."""

from __future__ import annotations

import torch
from torch import nn

from gan_translate.networks.dcgan import downsampling_trunk
from gan_translate.networks.layers import init_weights
from gan_translate.ranges import NonNegativeInt, PositiveInt


class ConvEncoder(nn.Module):
    """x -> z (deterministic q(z | x), the paper's simplest choice): DCGAN-style strided convs, then linear."""

    def __init__(
        self,
        input_nc: int,
        image_size: int,
        latent_dim: PositiveInt,
        nef: int = 64,
        norm: str = "batch",
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        trunk, (channels, height, width) = downsampling_trunk(input_nc, image_size, nef, norm)
        self.model = nn.Sequential(trunk, nn.Flatten(), nn.Linear(channels * height * width, latent_dim))
        init_weights(self, init_type, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LatentDiscriminator(nn.Module):
    """D(z): an MLP telling prior samples from encoded codes; one raw score per code."""

    def __init__(
        self, latent_dim: int, hidden: PositiveInt = 512, n_layers: NonNegativeInt = 2, init_type: str = "normal", init_gain: float = 0.02
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2, True)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.model = nn.Sequential(*layers)
        init_weights(self, init_type, init_gain)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z).flatten()
