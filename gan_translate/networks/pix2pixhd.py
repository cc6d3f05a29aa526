"""pix2pixHD networks (Wang et al. 2018): the coarse-to-fine generator, the multi-scale PatchGAN and the
instance-wise feature encoder, plus the generator wrapper that turns raw label/instance inputs into the
generator's input (one-hot labels, instance boundary map, instance features).

- ``GlobalGenerator`` (G1): c7s1-ngf, ``n_downsample_global`` stride-2 convs, ``n_blocks_global`` residual
  blocks, mirrored transposed convs, c7s1-output_nc + tanh; instance norm and reflection padding.
  Generators expose ``size_divisor`` (sides must be multiples of it) and ``min_size`` (smallest side).
- ``LocalEnhancer`` (G2): a full-resolution front-end whose features are *added* to G1's last feature map,
  G1 running on a 2x average-pooled input; then residual blocks, an upsampling and the output layer.
- ``MultiscaleDiscriminator``: ``num_D`` PatchGANs on the image and its 2x, 4x ... average-pooled copies;
  returns every intermediate feature map of every scale (for the feature-matching loss).
- ``FeatureEncoder``: image -> ``feat_num`` channels, averaged over each instance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gan_translate.networks.discriminators import NLayerDiscriminator
from gan_translate.networks.generators import ResnetBlock
from gan_translate.networks.layers import init_weights, norm_layer, one_hot, uses_bias
from gan_translate.ranges import NonNegativeInt, PositiveInt

# Label maps travel as 8-bit grey images scaled to [-1, 1] (as every other input image): id = (x + 1) * 127.5.
MAX_LABEL_NC = 256


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """The paper's 2x downsampling: 3x3 average pooling, stride 2, border windows averaged over the image only."""
    return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)


def _conv_block(in_nc: int, out_nc: int, norm: str, **conv) -> list[nn.Module]:
    return [nn.Conv2d(in_nc, out_nc, bias=uses_bias(norm), **conv), norm_layer(norm)(out_nc), nn.ReLU(True)]


def _up_block(in_nc: int, out_nc: int, norm: str) -> list[nn.Module]:
    return [
        nn.ConvTranspose2d(in_nc, out_nc, 3, stride=2, padding=1, output_padding=1, bias=uses_bias(norm)),
        norm_layer(norm)(out_nc),
        nn.ReLU(True),
    ]


def _output_layer(in_nc: int, output_nc: int, padding: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_nc, output_nc, 7, padding=3, padding_mode=padding), nn.Tanh())


def _downsampling(input_nc: int, ngf: int, n_downsampling: int, norm: str, padding: str) -> list[nn.Module]:
    """c7s1-ngf, then ``n_downsampling`` stride-2 convs that each double the width (ends ngf * 2**n wide)."""
    layers = _conv_block(input_nc, ngf, norm, kernel_size=7, padding=3, padding_mode=padding)
    for n in range(n_downsampling):
        layers += _conv_block(ngf * 2**n, ngf * 2 ** (n + 1), norm, kernel_size=3, stride=2, padding=1)
    return layers


def _upsampling(ngf: int, n_upsampling: int, norm: str) -> list[nn.Module]:
    """The mirror of ``_downsampling``'s convs: from ngf * 2**n channels back to ngf, doubling the size each time."""
    layers = []
    for n in reversed(range(n_upsampling)):
        layers += _up_block(ngf * 2 ** (n + 1), ngf * 2**n, norm)
    return layers


def _residual_blocks(channels: int, n_blocks: int, norm: str, padding: str) -> list[nn.Module]:
    return [ResnetBlock(channels, norm=norm, padding=padding) for _ in range(n_blocks)]


class GlobalGenerator(nn.Module):
    """G1. ``features`` ends with ngf channels at full resolution; ``to_image`` is the output layer, which the
    local enhancer drops (it adds G1's features to its own instead)."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: PositiveInt = 64,
        n_downsample_global: int = 4,
        n_blocks_global: NonNegativeInt = 9,
        norm: str = "instance",
        padding: str = "reflect",
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        self.size_divisor = 2**n_downsample_global
        # The residual blocks' reflection padding needs a bottleneck of at least 2 x 2.
        self.min_size = 2 * self.size_divisor
        self.features = nn.Sequential(
            *_downsampling(input_nc, ngf, n_downsample_global, norm, padding),
            *_residual_blocks(ngf * 2**n_downsample_global, n_blocks_global, norm, padding),
            *_upsampling(ngf, n_downsample_global, norm),
        )
        self.to_image = _output_layer(ngf, output_nc, padding)
        init_weights(self, init_type, init_gain)

    @property
    def size_args(self) -> dict[str, int]:
        return {"n_downsample_global": self.size_divisor.bit_length() - 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_image(self.features(x))


class LocalEnhancerBranch(nn.Module):
    """One enhancer level: ``front`` (c7s1-ngf, d(2 ngf)) at its resolution, ``back`` (residual blocks, u(ngf))
    applied to front + the coarser level's features."""

    def __init__(self, input_nc: int, ngf: int, n_blocks: int, norm: str, padding: str) -> None:
        super().__init__()
        self.front = nn.Sequential(*_downsampling(input_nc, ngf, 1, norm, padding))
        self.back = nn.Sequential(*_residual_blocks(ngf * 2, n_blocks, norm, padding), *_upsampling(ngf, 1, norm))

    def forward(self, x: torch.Tensor, coarse_features: torch.Tensor) -> torch.Tensor:
        return self.back(self.front(x) + coarse_features)


class LocalEnhancer(nn.Module):
    """G = {G1, G2}. ``ngf`` is G1's width, as for ``GlobalGenerator``, so that the stage-1 generator config
    carries over unchanged; the n-th enhancer (coarsest first) is ``ngf / 2**n`` wide (the paper: G1 64, G2 32)."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        ngf: PositiveInt = 64,
        n_downsample_global: int = 4,
        n_blocks_global: NonNegativeInt = 9,
        n_local_enhancers: PositiveInt = 1,
        n_blocks_local: NonNegativeInt = 3,
        norm: str = "instance",
        padding: str = "reflect",
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if n_local_enhancers < 1:
            raise ValueError(f"generator.n_local_enhancers must be >= 1, got {n_local_enhancers}")
        if ngf % 2**n_local_enhancers:
            raise ValueError(f"generator.ngf={ngf} must be divisible by 2**n_local_enhancers = {2**n_local_enhancers}")
        self.n_local_enhancers = n_local_enhancers
        self.global_ngf = ngf
        self.size_divisor = 2 ** (n_downsample_global + n_local_enhancers)
        self.min_size = 2 * self.size_divisor  # G1's bottleneck at least 2 x 2
        global_generator = GlobalGenerator(
            input_nc, output_nc, ngf, n_downsample_global, n_blocks_global, norm, padding, init_type, init_gain
        )
        self.global_features = global_generator.features  # G1 without its output layer
        # enhancers[0] is the coarsest (right above G1), enhancers[-1] the full-resolution one.
        self.enhancers = nn.ModuleList(
            LocalEnhancerBranch(input_nc, ngf // 2**n, n_blocks_local, norm, padding)
            for n in range(1, n_local_enhancers + 1)
        )
        self.to_image = _output_layer(ngf // 2**n_local_enhancers, output_nc, padding)
        init_weights(self.enhancers, init_type, init_gain)
        init_weights(self.to_image, init_type, init_gain)

    @property
    def size_args(self) -> dict[str, int]:
        return {"n_downsample_global": self.size_divisor.bit_length() - 1 - self.n_local_enhancers,
                "n_local_enhancers": self.n_local_enhancers}

    def global_parameters(self):
        """G1's parameters (frozen for the first ``fix_global_epochs`` of the local stage)."""
        return self.global_features.parameters()

    def load_global_generator(self, state_dict: dict[str, torch.Tensor], source: str = "state_dict") -> None:
        """Load G1's weights from a ``GlobalGenerator`` state dict (``features.*``; its output layer is not used)
        or from another ``LocalEnhancer``'s (``global_features.*``)."""
        for prefix in ("features.", "global_features."):
            weights = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if weights:
                break
        else:
            raise ValueError(f"{source} holds no global generator weights (no 'features.*' keys)")
        own = self.global_features.state_dict()
        missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        reshaped = [f"{k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
                    for k in sorted(set(own) & set(weights)) if own[k].shape != weights[k].shape]
        if missing or unexpected or reshaped:
            raise ValueError(
                f"{source}: its global generator does not fit this local enhancer's G1 (same generator.ngf "
                f"({self.global_ngf}), n_downsample_global, n_blocks_global and input channels expected). missing: {missing[:3]}, unexpected: {unexpected[:3]}, other shapes: "
                f"{reshaped[:3]}"
            )
        self.global_features.load_state_dict(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]  # full resolution first
        for _ in range(self.n_local_enhancers):
            pyramid.append(downsample2x(pyramid[-1]))
        features = self.global_features(pyramid[-1])
        for level, enhancer in enumerate(self.enhancers):
            features = enhancer(pyramid[self.n_local_enhancers - 1 - level], features)
        return self.to_image(features)


def patch_features(discriminator: NLayerDiscriminator, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output of a PatchGAN (after each LeakyReLU) and, last, its score map."""
    features = []
    for layer in discriminator.model:
        x = layer(x)
        if isinstance(layer, nn.LeakyReLU):
            features.append(x)
    features.append(x)
    return features


def _output_side(side: int, layers) -> int:
    """Spatial side after a sequence of convolutions/poolings (each given by kernel, stride, padding)."""
    for kernel, stride, padding in layers:
        side = (side + 2 * padding - kernel) // stride + 1
        if side < 1:
            return 0
    return side


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs (``NLayerDiscriminator``); the k-th sees the input average-pooled k times by 2x.

    ``forward`` returns, per scale, the list of intermediate feature maps with the score map last.
    ``min_size`` is the smallest input side that every scale can take (its coarsest PatchGAN needs >= 1 score).
    """

    returns_features = True  # per-scale feature lists, not one score map: only models with feature matching take it

    def __init__(
        self,
        input_nc: int,
        ndf: PositiveInt = 64,
        n_layers: NonNegativeInt = 3,
        num_D: PositiveInt = 2,
        norm: str = "instance",
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if num_D < 1:
            raise ValueError(f"discriminator.num_D must be >= 1, got {num_D}")
        self.num_D, self.n_layers = num_D, n_layers
        self.discriminators = nn.ModuleList(
            NLayerDiscriminator(input_nc, ndf, n_layers, norm, init_type, init_gain) for _ in range(num_D)
        )
        convs = [(m.kernel_size[0], m.stride[0], m.padding[0])
                 for m in self.discriminators[0].modules() if isinstance(m, nn.Conv2d)]
        pooling = [(3, 2, 1)] * (num_D - 1)
        self.min_size = next(s for s in range(1, 1 << 20) if _output_side(s, pooling + convs) >= 1)

    @property
    def size_args(self) -> dict[str, int]:
        return {"num_D": self.num_D, "n_layers": self.n_layers}

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for scale, discriminator in enumerate(self.discriminators):
            if scale:
                x = downsample2x(x)
            outputs.append(patch_features(discriminator, x))
        return outputs


class FeatureEncoder(nn.Module):
    """E: image -> ``feat_num`` low-dimensional features per pixel (tanh), then averaged over each instance so
    that every object gets one feature vector (the paper's instance-wise average pooling)."""

    def __init__(
        self,
        input_nc: int,
        feat_num: int = 3,
        ngf: PositiveInt = 16,
        n_downsampling: int = 4,
        norm: str = "instance",
        padding: str = "reflect",
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        self.size_divisor = 2**n_downsampling
        self.min_size = 2 * self.size_divisor  # instance norm needs a bottleneck of at least 2 x 2
        self.model = nn.Sequential(
            *_downsampling(input_nc, ngf, n_downsampling, norm, padding),
            *_upsampling(ngf, n_downsampling, norm),
            *_output_layer(ngf, feat_num, padding),
        )
        init_weights(self, init_type, init_gain)

    def forward(self, image: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        return instance_average(self.model(image), regions)


# ----- label and instance maps -----
def label_ids(encoded: torch.Tensor) -> torch.Tensor:
    """Class ids from a label map encoded as an 8-bit grey image in [-1, 1] (N x 1 x H x W -> long)."""
    return torch.round((encoded.float() + 1) * 127.5).long()


def encode_label_ids(ids: torch.Tensor) -> torch.Tensor:
    """The inverse of ``label_ids``: class ids 0..255 -> float in [-1, 1]."""
    return ids.float() / 127.5 - 1


def one_hot_labels(ids: torch.Tensor, label_nc: int) -> torch.Tensor:
    """N x 1 x H x W class ids -> N x label_nc x H x W one-hot floats; ids outside [0, label_nc) are an error.

    The check reads the ids on the host, except in a training step that model.step_graph captures (a capture
    cannot wait for the host); the warm-up steps before it checked the data, and so does every label file read
    (``data.labels.read_label_map``)."""
    from gan_translate.models.step_graph import capturing_step  # networks do not import models at load time

    if not capturing_step():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= label_nc:
            raise ValueError(
                f"label map holds class ids {low}..{high}, but label_nc={label_nc} (ids 0..{label_nc - 1}); "
                "set data.label_nc to the number of classes"
            )
    return one_hot(ids[:, 0], label_nc, dim=1)


def boundary_map(regions: torch.Tensor) -> torch.Tensor:
    """1 where a pixel differs from a 4-neighbour (in any channel), else 0: the paper's instance edge map.
    N x C x H x W -> N x 1 x H x W float."""
    dx = (regions[..., :, 1:] != regions[..., :, :-1]).any(1, keepdim=True).float()
    dy = (regions[..., 1:, :] != regions[..., :-1, :]).any(1, keepdim=True).float()
    # Each difference marks the pixels on both of its sides; padding (not in-place |=) keeps it ONNX-exportable.
    sides = (F.pad(dx, (1, 0)), F.pad(dx, (0, 1)), F.pad(dy, (0, 0, 1, 0)), F.pad(dy, (0, 0, 0, 1)))
    return torch.stack(sides).amax(0)


def region_index(regions: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Number each (sample, region id) pair of an N x 1 x H x W region map: returns the N x H x W index of
    every pixel's region in 0..R-1 and R."""
    ids = regions[:, 0].long()
    ids = ids - ids.min()
    sample = torch.arange(ids.size(0), device=ids.device).view(-1, 1, 1)
    keys = ids + sample * (int(ids.max()) + 1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    return inverse, unique.numel()


def instance_average(features: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Replace each pixel's feature vector by the mean over its region (per sample). N x C x H x W."""
    inverse, count = region_index(regions)
    n, c, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, c).float()
    index = inverse.flatten()
    sums = flat.new_zeros(count, c).index_add_(0, index, flat)
    sizes = torch.bincount(index, minlength=count).clamp(min=1).to(flat.dtype)
    means = sums / sizes[:, None]
    return means[index].view(n, h, w, c).permute(0, 3, 1, 2).to(features.dtype)


def region_classes(index: torch.Tensor, count: int, classes: torch.Tensor | None, n_classes: int) -> torch.Tensor:
    """The class of each region (the most frequent class id among its pixels; all 0 without classes)."""
    if classes is None or n_classes == 1:
        return torch.zeros(count, dtype=torch.long, device=index.device)
    votes = torch.bincount(index.flatten() * n_classes + classes.flatten(), minlength=count * n_classes)
    return votes.view(count, n_classes).argmax(1)


class Pix2PixHDGenerator(nn.Module):
    """The generator as prediction sees it: raw inputs in, image out.

    Input: N x C x H x W with C = the label channels (1 for label maps: class ids as an 8-bit grey image in
    [-1, 1], or ``input_nc`` for RGB label images), optionally followed by 1 instance-map channel (raw instance
    ids as floats, only equality matters). The network gets [one-hot labels or RGB labels, boundary map of the
    instances (``instance``), instance features (``feat_num``)]. Without an instance channel, the boundary map
    is taken from the label map's own boundaries (only same-class neighbours are then not separated).
    Instance features come from the encoder in training and, at prediction, from the k-means cluster centres
    that ``gan_translate.encode_features`` stores in ``cluster_centres``: a cluster drawn at random per
    instance (``cluster_choice`` = k uses the k-th cluster of every class instead).
    """

    def __init__(
        self,
        network: nn.Module,
        label_nc: int = 0,
        input_nc: int = 3,
        instance: bool = False,
        feat_num: int = 0,
        n_clusters: PositiveInt = 10,
    ) -> None:
        super().__init__()
        if not 0 <= label_nc <= MAX_LABEL_NC:
            raise ValueError(f"data.label_nc must be in 0..{MAX_LABEL_NC} (label maps are 8-bit), got {label_nc}")
        self.network = network
        self.label_nc, self.instance, self.feat_num = label_nc, instance, feat_num
        self.label_channels = 1 if label_nc else input_nc
        self.condition_channels = (label_nc or input_nc) + int(instance)
        self.cluster_choice: int | None = None
        self.cluster_generator: torch.Generator | None = None
        if feat_num:
            classes = max(label_nc, 1)
            self.register_buffer("cluster_centres", torch.zeros(classes, n_clusters, feat_num))
            self.register_buffer("cluster_counts", torch.zeros(classes, dtype=torch.long))

    @property
    def size_divisor(self) -> int:
        return getattr(self.network, "size_divisor", 1)

    @property
    def min_size(self) -> int:
        return getattr(self.network, "min_size", self.size_divisor)

    @property
    def size_args(self) -> dict:
        return getattr(self.network, "size_args", {})

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.size(1) not in (self.label_channels, self.label_channels + 1):
            raise ValueError(
                f"pix2pixHD generator takes {self.label_channels} label channel(s)"
                f"{' + 1 instance-map channel' if self.instance else ''}, got {x.size(1)} channels"
            )
        if x.size(1) == self.label_channels:
            return x, None
        return x[:, : self.label_channels], x[:, self.label_channels :]

    def condition(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(network input without features, region map for instance features, class ids or None)."""
        labels, instances = self.split(x)
        ids = label_ids(labels) if self.label_nc else None
        semantic = one_hot_labels(ids, self.label_nc).to(labels.dtype) if self.label_nc else labels
        regions = instances if instances is not None else (ids if ids is not None else None)
        if self.instance:
            semantic = torch.cat([semantic, boundary_map(regions if regions is not None else labels)], 1)
        return semantic, regions, ids

    def synthesize(self, condition: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.feat_num:
            if features is None:
                raise ValueError("this generator also takes instance features (model.feature_encoder=true)")
            condition = torch.cat([condition, features.to(condition.dtype)], 1)
        return self.network(condition)

    def sample_features(self, regions: torch.Tensor | None, ids: torch.Tensor | None) -> torch.Tensor:
        """One cluster centre per region, of the region's class (zeros for a class without clusters)."""
        if regions is None:
            raise ValueError("instance features need regions: an instance map or a label map (label_nc > 0)")
        if int(self.cluster_counts.sum()) == 0:
            raise RuntimeError(
                "this model uses instance features (model.feature_encoder=true) but has no feature clusters yet: "
                "run `python -m gan_translate.encode_features ckpt_path=CKPT` and predict with the "
                "*-features.ckpt it writes"
            )
        index, count = region_index(regions)
        classes = region_classes(index, count, ids, self.cluster_centres.size(0))
        available = self.cluster_counts[classes]
        if self.cluster_choice is None:
            draw = torch.rand(count, generator=self.cluster_generator)  # a CPU generator, for reproducibility
            chosen = (draw.to(available.device) * available).long()
        else:
            chosen = torch.full_like(available, self.cluster_choice)
        chosen = torch.minimum(chosen, (available - 1).clamp(min=0))
        centres = self.cluster_centres[classes, chosen] * (available > 0)[:, None]
        n, _, h, w = regions.shape
        return centres[index.flatten()].view(n, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        condition, regions, ids = self.condition(x)
        if self.feat_num and features is None:
            features = self.sample_features(regions, ids)
        return self.synthesize(condition, features)
