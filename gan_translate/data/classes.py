"""Labelled single images for the generative models (DCGAN, cGAN, InfoGAN, AAE).

Every item is ``{"image": float tensor C x H x W in [-1, 1], "label": int}``, so a batch is
``{"image": N x C x H x W, "label": long N}``.

- ``ImageFolderDataModule`` (``data=image_folder``): ``root/train/<class>/*.png``, ``root/val/<class>/...``
  (``test`` stands in for a missing ``val``); labels are the indices of the class folder names of the train split,
  sorted (as torchvision's ImageFolder); images are resized to ``image_size`` and converted to ``channels``.
- ``SyntheticClassesDataModule`` (``data=synthetic_classes``): the embedded default, seven-segment digits 0-9
  drawn with random size, slant, rotation, stroke and position; a pure function of (seed, split, index).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from gan_translate.data.datamodule import TranslationDataModule, _require_root
from gan_translate.data.datasets import DataError, convert, image_mode, list_images, read_image
from gan_translate.data.synthetic import _generator

log = logging.getLogger(__name__)


def class_transform(image_size: int, flip: bool, train: bool) -> v2.Compose:
    """Resize to a square ``image_size`` (if needed), optional flips in training, to [-1, 1]."""
    steps: list[v2.Transform] = [
        v2.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    ]
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=[0.5], std=[0.5])]
    return v2.Compose(steps)


def class_folders(folder: Path, what: str) -> list[str]:
    """Sorted names of the class sub-folders of ``folder`` (hidden ones skipped); DataError if none.

    Names that are all numbers sort as numbers (0, 1, ..., 10: class index 10 is folder ``10``, where torchvision's
    text order would make it index 2); others sort as text, as torchvision's ImageFolder does."""
    if not folder.is_dir():
        raise DataError(f"{what}: folder {folder} does not exist (expected {folder}/<class>/*.png)")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if names and all(name.isdigit() for name in names):
        names.sort(key=int)
    if not names:
        raise DataError(f"{what}: {folder} has no class sub-folders (expected {folder}/<class>/*.png)")
    return names


class ClassFolderDataset(Dataset):
    """``root/<split>/<class>/*`` with the given class list (the train split's, so indices agree)."""

    def __init__(self, folder: str | Path, classes: list[str], channels: int = 3, transform: Callable | None = None):
        folder = Path(folder)
        image_mode(channels)  # 1 or 3, checked before any file is read
        present = class_folders(folder, f"{folder.name} split")
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise DataError(f"{folder} has class folders that the train split lacks: {unknown}; known: {classes}")
        per_class = [
            [(path, classes.index(name)) for path in list_images(folder / name, f"class {name!r} of the {folder.name} split")]
            for name in present
        ]
        # Round-robin over the classes: the first items (what sample grids show) cover every class.
        self.items = [item for group in itertools.zip_longest(*per_class) for item in group if item is not None]
        self.channels, self.transform, self.classes = channels, transform, classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        path, label = self.items[index]
        image = TF.to_image(convert(read_image(path), self.channels))
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": label}


# ----- seven-segment digits -----
# Segment end points in a digit box x in [0, 1], y in [0, 2] (y down): a top, b/c right, d bottom, e/f left, g middle.
SEGMENTS = {
    "a": ((0, 0), (1, 0)), "b": ((1, 0), (1, 1)), "c": ((1, 1), (1, 2)), "d": ((0, 2), (1, 2)),
    "e": ((0, 1), (0, 2)), "f": ((0, 0), (0, 1)), "g": ((0, 1), (1, 1)),
}
DIGITS = ["abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg"]
SUPERSAMPLE = 4  # drawn 4x larger, then downsampled: smooth strokes


def render_digit(digit: int, size: int, gen: torch.Generator) -> Image.Image:
    """A white seven-segment ``digit`` on black, ``size`` x ``size`` grayscale, with random style."""
    u = torch.rand(7, generator=gen).tolist()
    big = size * SUPERSAMPLE
    height = big * (0.5 + 0.25 * u[0])  # digit height
    width = height * (0.4 + 0.2 * u[1])
    slant = 0.3 * (u[2] - 0.5)  # shear: x shifts with height
    angle = math.radians(20 * (u[3] - 0.5))
    stroke = max(SUPERSAMPLE, round(big * (0.06 + 0.05 * u[4])))
    centre_x = big / 2 + (u[5] - 0.5) * (big - width) * 0.4
    centre_y = big / 2 + (u[6] - 0.5) * (big - height) * 0.4
    cos, sin = math.cos(angle), math.sin(angle)

    def place(x: float, y: float) -> tuple[float, float]:
        px, py = (x - 0.5) * width, (y - 1) * height / 2
        px -= slant * py
        return centre_x + cos * px - sin * py, centre_y + sin * px + cos * py

    image = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(image)
    radius = stroke / 2
    for segment in DIGITS[digit]:
        start, end = (place(*point) for point in SEGMENTS[segment])
        draw.line([start, end], fill=255, width=stroke)
        for x, y in (start, end):  # round caps and joints
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    return image.resize((size, size), Image.Resampling.BOX)


class SyntheticDigits(Dataset):
    """Seven-segment digits, item ``i`` is digit ``i % 10`` (balanced classes); deterministic."""

    def __init__(
        self, length: int, image_size: int = 28, channels: int = 1, split: str = "train", seed: int = 0,
        transform: Callable | None = None,
    ) -> None:
        image_mode(channels)
        self.length, self.image_size, self.channels, self.split, self.seed = length, image_size, channels, split, seed
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        gen = _generator(self.seed, self.split, index)
        label = index % 10
        image = TF.to_image(render_digit(label, self.image_size, gen))
        if self.channels == 3:  # a random ink and paper colour
            ink, paper = torch.rand(3, 1, 1, generator=gen) * 155 + 100, torch.rand(3, 1, 1, generator=gen) * 80
            alpha = image.float() / 255
            image = TF.to_image((alpha * ink + (1 - alpha) * paper).round().to(torch.uint8))
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": label}


# ----- datamodules -----
class ClassDataModule(TranslationDataModule):
    """Loaders (and ``on_bad_image``) of TranslationDataModule for labelled single images.

    ``image_size``, ``channels`` and ``num_classes`` are read by the model configs (``${data.image_size}`` ...).
    """

    paired = False

    def __init__(
        self,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        flip: bool = False,
        drop_last: bool = True,
        **kwargs,
    ) -> None:
        if channels not in (1, 3):
            raise DataError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if image_size < 1:
            raise DataError(f"data.image_size must be positive, got {image_size}")
        super().__init__(
            input_nc=channels, output_nc=channels, preprocess="none", flip=flip, drop_last=drop_last, **kwargs
        )
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes

    def transform(self, train: bool):
        return class_transform(self.image_size, self.flip, train)


class ImageFolderDataModule(ClassDataModule):
    """``root/{train,val,test}/<class>/*``; classes = sorted folder names of ``root/train``."""

    def __init__(self, root: str, num_classes: int = 10, **kwargs) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        self.root = _require_root(root)
        self.classes = class_folders(self.root / "train", "data=image_folder train split")
        if len(self.classes) != num_classes:
            raise DataError(
                f"data.num_classes={num_classes}, but {self.root / 'train'} holds {len(self.classes)} class folders "
                f"{self.classes[:12]}{' ...' if len(self.classes) > 12 else ''}; set data.num_classes={len(self.classes)}"
            )
        # The index is what labels mean everywhere after (sample label=N, the cGAN's embedding): say it once.
        log.info("data=image_folder classes (label = folder): %s",
                 ", ".join(f"{index}={name}" for index, name in enumerate(self.classes)))

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        if not (self.root / split).is_dir():
            return None
        return ClassFolderDataset(self.root / split, self.classes, self.channels, self.transform(train))


class SyntheticClassesDataModule(ClassDataModule):
    """The embedded labelled default: seven-segment digits 0-9 (no files)."""

    def __init__(
        self, train_length: int = 2000, val_length: int = 200, seed: int = 0, num_classes: int = 10, **kwargs
    ) -> None:
        if num_classes != 10:
            raise DataError(f"data=synthetic_classes has 10 classes (digits 0-9); got data.num_classes={num_classes}")
        super().__init__(num_classes=num_classes, **kwargs)
        self.seed = seed
        self.lengths = {"train": train_length, "val": val_length, "test": val_length}
        self.classes = [str(digit) for digit in range(10)]

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        return SyntheticDigits(
            self.lengths[split], self.image_size, self.channels, split, self.seed, self.transform(train)
        )
