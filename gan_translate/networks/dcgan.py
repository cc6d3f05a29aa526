"""DCGAN networks (Radford et al. 2016), shared by DCGAN, the conditional GAN and InfoGAN.

- ``DCGANGenerator``: z (N x latent_dim) -> a ``base x base`` map by one fractionally-strided conv, then
  fractionally-strided convs that double the size, batch norm and ReLU, tanh out. With ``num_classes`` the
  class label is embedded (or one-hot coded) and concatenated to z (conditional GAN / supervised AAE).
- ``DCGANDiscriminator``: strided convs with batch norm (none on the first layer) and LeakyReLU 0.2, then one
  conv over the last ``base x base`` map: one raw score per image (no sigmoid: the GAN loss reads scores).
  Split into ``features`` (the trunk) and ``score`` (the head) so InfoGAN's Q head can share the trunk.
  Class conditioning (``conditioning``): ``concat`` = one-hot label maps concatenated to the image (Mirza &
  Osindero); ``projection`` = inner product of a class embedding with the pooled features (Miyato & Koyama 2018).
- ``LatentCodeHead``: InfoGAN's Q(c | x) on the discriminator's features.

Image sizes: ``base * 2**n`` with ``base`` in 3..7 and n >= 1, e.g. 28 (7 -> 14 -> 28), 32 (4 -> ... -> 32), 64.
"""

from __future__ import annotations

import torch
from torch import nn

from gan_translate.networks.layers import init_weights, norm_layer, one_hot, uses_bias
from gan_translate.ranges import PositiveInt

CONDITIONINGS = ("auto", "none", "concat", "projection")


def size_plan(image_size: int, key: str = "data.image_size") -> tuple[int, int]:
    """(base, n): ``image_size = base * 2**n``, the first map size and the number of doublings."""
    base, doublings = image_size, 0
    while base % 2 == 0 and base > 7:
        base, doublings = base // 2, doublings + 1
    if doublings == 0 or not 3 <= base <= 7:
        raise ValueError(
            f"{key}={image_size}: DCGAN networks need base * 2**n pixels with base 3..7 and n >= 1 "
            "(e.g. 16, 28, 32, 48, 64, 128)"
        )
    return base, doublings


def label_input(labels: torch.Tensor | None, num_classes: int, who: str) -> torch.Tensor:
    if num_classes and labels is None:
        raise ValueError(f"{who} is class-conditional ({num_classes} classes) and needs labels")
    if not num_classes and labels is not None:
        raise ValueError(f"{who} is unconditional; it takes no labels")
    return labels


def downsampling_trunk(in_channels: int, image_size: int, width: int, norm: str) -> tuple[nn.Sequential, tuple]:
    """Strided 4x4 convs halving the size down to the ``base`` map, doubling the width from ``width``, batch
    norm (not on the input layer, as in DCGAN) and LeakyReLU 0.2. Returns the trunk and its output shape."""
    base, doublings = size_plan(image_size)
    make_norm, bias = norm_layer(norm), uses_bias(norm)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, kernel_size=4, stride=2, padding=1),
        nn.LeakyReLU(0.2, True),
    ]
    channels = width
    for _ in range(doublings - 1):
        layers += [
            nn.Conv2d(channels, channels * 2, kernel_size=4, stride=2, padding=1, bias=bias),
            make_norm(channels * 2),
            nn.LeakyReLU(0.2, True),
        ]
        channels *= 2
    return nn.Sequential(*layers), (channels, base, base)


class DCGANGenerator(nn.Module):
    """G(z[, y]) -> ``N x output_nc x image_size x image_size`` in [-1, 1]."""

    def __init__(
        self,
        output_nc: int,
        image_size: int,
        latent_dim: PositiveInt = 100,
        ngf: PositiveInt = 64,
        norm: str = "batch",
        num_classes: int = 0,
        class_embedding: int | None = None,
        fc_features: int | None = None,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        base, doublings = size_plan(image_size)
        self.latent_dim, self.num_classes, self.image_size, self.output_nc = latent_dim, num_classes, image_size, output_nc
        # The label joins z as a learned embedding, or as a one-hot vector (class_embedding: null).
        self.embedding = nn.Embedding(num_classes, class_embedding) if num_classes and class_embedding else None
        label_dim = (class_embedding or num_classes) if num_classes else 0
        make_norm, bias = norm_layer(norm), uses_bias(norm)
        channels, in_features = ngf * 2 ** (doublings - 1), latent_dim + label_dim
        layers: list[nn.Module] = []
        if fc_features:  # InfoGAN's G: a fully connected layer first (a 1x1 transposed conv on the 1x1 input)
            layers += [nn.ConvTranspose2d(in_features, fc_features, kernel_size=1, bias=bias), make_norm(fc_features),
                       nn.ReLU(True)]
            in_features = fc_features
        layers += [  # 1x1 -> base x base
            nn.ConvTranspose2d(in_features, channels, kernel_size=base, stride=1, padding=0, bias=bias),
            make_norm(channels),
            nn.ReLU(True),
        ]
        for _ in range(doublings - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, kernel_size=4, stride=2, padding=1, bias=bias),
                make_norm(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, output_nc, kernel_size=4, stride=2, padding=1), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self, init_type, init_gain)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = label_input(labels, self.num_classes, "this generator")
        if labels is not None:
            code = self.embedding(labels) if self.embedding is not None else one_hot(labels, self.num_classes)
            z = torch.cat([z, code.to(z.dtype)], dim=1)
        return self.model(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """D(x[, y]) -> N raw scores. ``features(x, y)`` is the trunk, ``score(h, y)`` the head."""

    def __init__(
        self,
        input_nc: int,
        image_size: int,
        ndf: PositiveInt = 64,
        norm: str = "batch",
        num_classes: int = 0,
        conditioning: str = "auto",
        fc_features: int | None = None,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"discriminator.conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        if conditioning == "auto":  # concat for class-conditional models, none otherwise
            conditioning = "concat" if num_classes else "none"
        if conditioning != "none" and not num_classes:
            raise ValueError(
                f"discriminator.conditioning={conditioning} needs class labels, but this model is unconditional; "
                "use discriminator.conditioning=auto (or none), or a class-conditional model such as model=cgan"
            )
        self.conditioning = conditioning
        self.num_classes = num_classes if conditioning != "none" else 0
        in_channels = input_nc + (num_classes if conditioning == "concat" else 0)
        self.trunk, self.feature_shape = downsampling_trunk(in_channels, image_size, ndf, norm)
        channels, base, _ = self.feature_shape
        if fc_features:  # InfoGAN's D: the last map -> a fully connected layer of fc_features (+ norm) shared with Q
            self.trunk.extend([
                nn.Conv2d(channels, fc_features, kernel_size=base, bias=uses_bias(norm)),
                norm_layer(norm)(fc_features),
                nn.LeakyReLU(0.2, True),
            ])
            channels, base = fc_features, 1
            self.feature_shape = (fc_features, 1, 1)
        self.head = nn.Conv2d(channels, 1, kernel_size=base)  # the whole last map -> one score
        self.embedding = nn.Embedding(num_classes, channels) if conditioning == "projection" else None
        init_weights(self, init_type, init_gain)
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, 0.0, init_gain)

    def features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = label_input(labels, self.num_classes, f"discriminator (conditioning={self.conditioning})")
        if self.conditioning == "concat":
            maps = one_hot(labels, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, maps.expand(-1, -1, *x.shape[-2:])], dim=1)
        return self.trunk(x)

    def score(self, h: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.head(h).flatten()
        if self.conditioning == "projection":
            scores = scores + (self.embedding(labels) * h.mean(dim=(2, 3))).sum(dim=1)
        return scores

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(self.features(x, labels), labels)


class LatentCodeHead(nn.Module):
    """InfoGAN's Q(c | x) on D's features: logits of the categorical code, and mean and log-std of each
    continuous code (a factored Gaussian, as in the paper)."""

    def __init__(
        self, feature_shape: tuple[int, int, int], categorical_dim: int, continuous_dim: int, hidden: int = 128
    ) -> None:
        super().__init__()
        self.categorical_dim, self.continuous_dim = categorical_dim, continuous_dim
        in_features = feature_shape[0] * feature_shape[1] * feature_shape[2]
        self.model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(0.2, True),
            nn.Linear(hidden, categorical_dim + 2 * continuous_dim),
        )
        init_weights(self, "normal", 0.02)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(categorical logits, continuous means, continuous log-stds)."""
        out = self.model(h)
        logits, mean, log_std = out.split([self.categorical_dim, self.continuous_dim, self.continuous_dim], dim=1)
        return logits, mean, log_std
