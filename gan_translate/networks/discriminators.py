"""Discriminators: the PatchGAN (``NLayerDiscriminator``) and the 1x1 ``PixelDiscriminator``.

Both output raw scores (no sigmoid): the GAN loss decides how to read them. Each declares ``min_size``, the
smallest H and W it takes with a batch of one in train mode (see ``gan_translate.sizes``).
"""

from __future__ import annotations

import torch
from torch import nn

from gan_translate.networks.layers import init_weights, norm_layer, uses_bias
from gan_translate.ranges import NonNegativeInt, PositiveInt


class NLayerDiscriminator(nn.Module):
    """PatchGAN: with ``n_layers=3`` ("basic") each output score sees a 70x70 input patch."""

    def __init__(
        self,
        input_nc: int,
        ndf: PositiveInt = 64,
        n_layers: NonNegativeInt = 3,
        norm: str = "batch",
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.min_size = self.smallest_side(n_layers)
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last feature layer keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=bias),
                make_norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights(self, init_type, init_gain)

    @staticmethod
    def smallest_side(n_layers: int) -> int:
        """The 4x4 convs with stride 2 floor-halve the side (the first conv, then n_layers - 1 more); each
        4x4 conv with stride 1 (the last feature layer, if n_layers >= 1, and the output layer) takes one
        pixel off. At least one score must come out; that also keeps the deepest batch norm at >= 2x2."""
        halvings = max(1, n_layers)
        shrinking = 2 if n_layers >= 1 else 1
        return (shrinking + 1) * 2**halvings

    @property
    def size_args(self) -> dict[str, int]:
        return {"n_layers": self.n_layers}

    def args_for_size(self, height: int, width: int) -> dict[str, int] | None:
        """The deepest ``n_layers`` below the current one that still gives a score on the shorter side."""
        for n in range(self.n_layers - 1, -1, -1):
            if min(height, width) >= self.smallest_side(n):
                return {"n_layers": n}
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN ("pixelGAN"): judges each pixel's colour on its own."""

    def __init__(
        self,
        input_nc: int,
        ndf: PositiveInt = 64,
        norm: str = "batch",
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        self.norm = norm
        # 1x1 convs take any size, but a norm layer needs more than one value per channel (batch of one).
        self.min_size = 1 if norm == "none" else 2
        bias = uses_bias(norm)
        self.model = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, bias=bias),
            norm_layer(norm)(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, bias=bias),
        )
        init_weights(self, init_type, init_gain)

    @property
    def size_args(self) -> dict[str, str]:
        return {"norm": self.norm}

    def args_for_size(self, height: int, width: int) -> dict[str, str] | None:
        return {"norm": "none"} if self.norm != "none" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
