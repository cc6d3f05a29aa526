"""Paired preprocessing on torchvision transforms v2.

Calling a v2 transform with several images applies the *same* random crop and flip to all of them,
which is exactly what paired A|B data needs. Outputs are float tensors in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
# Modes whose training images are all crop_size x crop_size squares.
CROPPING_MODES = ("resize_and_crop", "crop", "scale_width_and_crop")
# preprocess=none and scale_width round sides down to multiples of this (what every ResNet generator takes).
MAKE_DIVISIBLE = 4


class ScaleWidth(v2.Transform):
    """Resize so that the width is ``width``, keeping the aspect ratio (the reference's scale_width)."""

    def __init__(self, width: int, interpolation: InterpolationMode = InterpolationMode.BICUBIC) -> None:
        super().__init__()
        self.width = width
        self.interpolation = interpolation

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = TF.get_size(inpt)
        new_height = max(1, round(height * self.width / width))
        return TF.resize(inpt, [new_height, self.width], interpolation=self.interpolation, antialias=True)


class MakeDivisible(v2.Transform):
    """Resize down to the nearest multiple of ``divisor`` on each side (for preprocess=none)."""

    def __init__(self, divisor: int) -> None:
        super().__init__()
        self.divisor = divisor

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = TF.get_size(inpt)
        size = [max(self.divisor, height // self.divisor * self.divisor),
                max(self.divisor, width // self.divisor * self.divisor)]
        if size == [height, width]:
            return inpt
        return TF.resize(inpt, size, interpolation=InterpolationMode.BICUBIC, antialias=True)


def build_transform(
    preprocess: str = "resize_and_crop",
    load_size: int = 286,
    crop_size: int = 256,
    flip: bool = True,
    train: bool = True,
    size_divisor: int = MAKE_DIVISIBLE,
) -> v2.Compose:
    """Training gets random crops and flips; evaluation is deterministic (resize to, or centre-crop at, crop_size)."""
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(f"data.preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}")
    bicubic = InterpolationMode.BICUBIC
    crop = v2.RandomCrop(crop_size) if train else v2.CenterCrop(crop_size)
    steps: list[v2.Transform] = []
    if preprocess == "resize_and_crop":
        size = load_size if train else crop_size
        steps += [v2.Resize((size, size), interpolation=bicubic, antialias=True)]
        if train:
            steps.append(crop)
    elif preprocess == "crop":
        steps.append(crop)
    elif preprocess == "scale_width":
        steps.append(ScaleWidth(crop_size))
    elif preprocess == "scale_width_and_crop":
        steps += [ScaleWidth(load_size if train else crop_size), crop]
    if preprocess in ("none", "scale_width"):
        steps.append(MakeDivisible(size_divisor))
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=[0.5], std=[0.5])]
    return v2.Compose(steps)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (for saving and for metrics that expect [0, 1])."""
    return (images.clamp(-1, 1) + 1) / 2


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> 8-bit levels 0..255, rounded to the nearest (``to_pil_image`` of a float tensor truncates, which
    darkens every saved output by half a level on average), for saving images."""
    return to_unit_range(images).mul(255).round().to(torch.uint8)
