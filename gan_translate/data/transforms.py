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


class CenterCropNoPad(v2.CenterCrop):
    """Centre crop that refuses an image smaller than the crop, as ``RandomCrop`` does in training, where
    ``v2.CenterCrop`` pads it with black: validation metrics would score the padding."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = TF.get_size(inpt)
        if height < self.size[0] or width < self.size[1]:
            raise ValueError(f"the crop {tuple(self.size)} is larger than the image ({height}, {width}) (H, W)")
        return super().transform(inpt, params)


class Preprocess(v2.Compose):
    """The pipeline :func:`build_transform` returns; ``advice`` says which data keys to change when an image is
    smaller than the crop (it depends on the mode, so the error naming the image can say the right thing)."""

    def __init__(self, transforms: list[v2.Transform], advice: str) -> None:
        super().__init__(transforms)
        self.advice = advice


def crop_advice(preprocess: str | None, load_size: int | None = None, crop_size: int | None = None) -> str:
    """What to change when a training image is smaller than the crop under ``preprocess`` (None: not known)."""
    smaller = "or a smaller data.crop_size"
    if preprocess == "crop":
        return ("data.preprocess=crop cuts the crop from the image as it is; use data.preprocess=resize_and_crop or "
                f"scale_width_and_crop (which resize first), {smaller}")
    if preprocess == "scale_width_and_crop":
        return (f"data.preprocess=scale_width_and_crop scales the width to data.load_size={load_size}, which leaves "
                "a wide image's height below the crop; use a larger data.load_size, data.preprocess=resize_and_crop "
                f"(which resizes both sides), {smaller}")
    if preprocess == "resize_and_crop":
        return f"use data.load_size>={crop_size} (resize_and_crop resizes to data.load_size, then crops), {smaller}"
    return f"use data.preprocess=resize_and_crop or scale_width_and_crop (which resize first), {smaller}"


def advice_of(transform: Any) -> str:
    """The crop advice of a :class:`Preprocess` pipeline; the general one for a user's own transform."""
    return getattr(transform, "advice", None) or crop_advice(None)


def build_transform(
    preprocess: str = "resize_and_crop",
    load_size: int = 286,
    crop_size: int = 256,
    flip: bool = True,
    train: bool = True,
    size_divisor: int = MAKE_DIVISIBLE,
) -> Preprocess:
    """Training gets random crops and flips; evaluation is deterministic: resize_and_crop resizes to crop_size
    (the whole image), crop and scale_width_and_crop take the centre crop of what training crops from (the image
    as it is; its width scaled to load_size). An image smaller than the crop is an error in both, never padded."""
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(f"data.preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}")
    bicubic = InterpolationMode.BICUBIC
    crop = v2.RandomCrop(crop_size) if train else CenterCropNoPad(crop_size)
    steps: list[v2.Transform] = []
    if preprocess == "resize_and_crop":
        size = load_size if train else crop_size
        steps += [v2.Resize((size, size), interpolation=bicubic, antialias=True)]
        if train:
            steps.append(crop)
    elif preprocess == "crop":
        steps.append(crop)
    elif preprocess == "scale_width":
        # To load_size, as the reference repos do (pix2pixHD: loadSize=1024, fineSize=512 trains 1024 wide).
        steps.append(ScaleWidth(load_size))
    elif preprocess == "scale_width_and_crop":
        steps += [ScaleWidth(load_size), crop]  # evaluation at training's scale: a wide image's height fits the crop
    if preprocess in ("none", "scale_width"):
        steps.append(MakeDivisible(size_divisor))
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=[0.5], std=[0.5])]
    return Preprocess(steps, crop_advice(preprocess, load_size, crop_size))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (for saving and for metrics that expect [0, 1])."""
    return (images.clamp(-1, 1) + 1) / 2


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> 8-bit levels 0..255, rounded to the nearest (``to_pil_image`` of a float tensor truncates, which
    darkens every saved output by half a level on average), for saving images."""
    return to_unit_range(images).mul(255).round().to(torch.uint8)
