"""Generators with the papers' names: the pix2pix U-Net and the CycleGAN ResNet.

Each generator maps ``N x input_nc x H x W`` in [-1, 1] to ``N x output_nc x H x W`` in [-1, 1] and exposes
``size_divisor``: H and W must be multiples of it (predict pads or resizes other sizes).
"""

from __future__ import annotations

import torch
from torch import nn

from gan_translate.networks.layers import init_weights, norm_layer, uses_bias


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

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"UnetGenerator needs num_downs >= 5, got {num_downs}")
        self.size_divisor = 2**num_downs
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
        n_blocks: int = 9,
        ngf: int = 64,
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
        self.size_divisor = 2**n_downsampling
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
