"""Generators with the papers' names: the pix2pix U-Net and the CycleGAN ResNet.

Each generator maps ``N x input_nc x H x W`` in [-1, 1] to ``N x output_nc x H x W`` in [-1, 1] and declares
the sizes it takes (see ``gan_translate.sizes``): H and W must be multiples of ``size_divisor`` and at least
``min_size``; ``size_args`` names the arguments that set them and ``args_for_size(h, w)`` suggests others.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gan_translate.networks.layers import init_weights, norm_layer, uses_bias
from gan_translate.ranges import NonNegativeInt, PositiveInt


class UnetSkipConnectionBlock(nn.Module):
    """One level of the U-Net: down -> (inner levels) -> up, with the input concatenated to the output.

    ``outermost`` has no skip (it produces the image); ``innermost`` has no submodule.
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        input_nc = outer_nc if input_nc is None else input_nc

        down_conv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=bias)
        if outermost:
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            down = [down_conv]
            up = [nn.ReLU(True), up_conv, nn.Tanh()]
            layers = [*down, submodule, *up]
        elif innermost:
            up_conv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            down = [nn.LeakyReLU(0.2, True), down_conv]
            up = [nn.ReLU(True), up_conv, make_norm(outer_nc)]
            layers = [*down, *up]
        else:
            up_conv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            down = [nn.LeakyReLU(0.2, True), down_conv, make_norm(inner_nc)]
            up = [nn.ReLU(True), up_conv, make_norm(outer_nc)]
            layers = [*down, submodule, *up]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(nn.Module):
    """pix2pix U-Net: ``num_downs`` halvings, so 256x256 inputs need ``num_downs=8`` (unet_256).

    Dropout (0.5 in the paper) sits in the three innermost non-bottleneck decoder levels and is the
    generator's only source of noise.
    """

    MIN_DOWNS = 5  # the four outer levels plus the innermost one

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        num_downs: PositiveInt = 8,
        ngf: PositiveInt = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if num_downs < self.MIN_DOWNS:
            raise ValueError(f"UnetGenerator needs num_downs >= {self.MIN_DOWNS}, got {num_downs}")
        self.num_downs = num_downs
        # Each level halves the side and its skip connection concatenates the input with the upsampled
        # output, so every level needs an even side: H and W must be multiples of 2**num_downs. The smallest
        # such side ends at a 1x1 bottleneck, with the deepest batch norms at 2x2 (fine with a batch of one);
        # anything smaller reaches a 1x1 batch norm or a 0-pixel conv.
        self.size_divisor = self.min_size = 2**num_downs
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(
            output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm=norm
        )
        init_weights(self, init_type, init_gain)

    @property
    def size_args(self) -> dict[str, int]:
        return {"num_downs": self.num_downs}

    def args_for_size(self, height: int, width: int) -> dict[str, int] | None:
        """The deepest ``num_downs`` whose ``2**num_downs`` divides both sides, if any is allowed."""
        common = math.gcd(height, width)
        num_downs = (common & -common).bit_length() - 1  # the power of two in the common divisor
        return {"num_downs": num_downs} if num_downs >= self.MIN_DOWNS else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResnetBlock(nn.Module):
    """R256 in the CycleGAN paper: two 3x3 convs with reflection padding and a residual connection."""

    def __init__(self, dim: int, norm: str = "instance", dropout: float = 0.0, padding: str = "reflect") -> None:
        super().__init__()
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, padding_mode=padding, bias=bias),
            make_norm(dim),
            nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Conv2d(dim, dim, kernel_size=3, padding=1, padding_mode=padding, bias=bias), make_norm(dim)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN generator: c7s1-64, d128, d256, ``n_blocks`` x R256, u128, u64, c7s1-output_nc."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        n_blocks: NonNegativeInt = 9,
        ngf: PositiveInt = 64,
        norm: str = "instance",
        dropout: float = 0.0,
        padding: str = "reflect",
        n_downsampling: int = 2,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        make_norm = norm_layer(norm)
        bias = uses_bias(norm)
        self.n_downsampling, self.padding, self.norm = n_downsampling, padding, norm
        self.size_divisor = 2**n_downsampling  # the up-convolutions double: other sides come back larger
        self.min_size = self.smallest_side(n_downsampling, padding, norm)
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=3, padding_mode=padding, bias=bias),
            make_norm(ngf),
            nn.ReLU(True),
        ]
        channels = ngf
        for _ in range(n_downsampling):  # d128, d256
            layers += [
                nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                make_norm(channels * 2),
                nn.ReLU(True),
            ]
            channels *= 2
        layers += [ResnetBlock(channels, norm=norm, dropout=dropout, padding=padding) for _ in range(n_blocks)]
        for _ in range(n_downsampling):  # u128, u64
            layers += [
                nn.ConvTranspose2d(
                    channels, channels // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias
                ),
                make_norm(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.Conv2d(channels, output_nc, kernel_size=7, padding=3, padding_mode=padding), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self, init_type, init_gain)

    @staticmethod
    def smallest_side(n_downsampling: int, padding: str, norm: str) -> int:
        """Smallest H and W for a batch of one in train mode: reflection padding needs every side longer
        than its pad (3 at the 7x7 convs, 1 in the residual blocks at the bottleneck), and a norm layer
        needs more than one value per channel at the bottleneck."""
        divisor = 2**n_downsampling
        bottleneck = 2 if padding == "reflect" or norm != "none" else 1
        side = max(divisor * bottleneck, 4 if padding == "reflect" else 1)
        return -(-side // divisor) * divisor

    @property
    def size_args(self) -> dict[str, int]:
        return {"n_downsampling": self.n_downsampling}

    def args_for_size(self, height: int, width: int) -> dict[str, int] | None:
        """The largest ``n_downsampling`` below the current one with which both sides fit, if any."""
        for n in range(self.n_downsampling - 1, -1, -1):
            divisor, smallest = 2**n, self.smallest_side(n, self.padding, self.norm)
            if all(side % divisor == 0 and side >= smallest for side in (height, width)):
                return {"n_downsampling": n}
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
