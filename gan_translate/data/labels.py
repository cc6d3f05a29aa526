"""Semantic label maps (and instance maps) as translation inputs, pix2pixHD style.

Items are ``{"A": label input, "B": photo, "inst": instance ids (optional), "name": str}``:
- ``label_nc > 0``: "A" is a 1-channel map of class ids 0..label_nc-1, carried like any 8-bit grey image in
  [-1, 1] (id = (A + 1) * 127.5), so that prediction reads label PNGs the same way; the model one-hot encodes it.
  ``label_nc = 0``: "A" is an ordinary (RGB) label image.
- ``instance``: "inst" is the instance-id map as float32 (raw ids; only equality matters), from which the model
  computes the boundary map (and the instance-wise features).
Label and instance maps are resized, cropped and flipped like the photo but always with NEAREST interpolation
(they are wrapped as ``tv_tensors.Mask``, which torchvision v2 never interpolates or normalises).

Folder layout (``LabelFoldersDataModule``), one folder per split, files matched by name::

    root/train/labels/x.png  root/train/images/x.jpg  root/train/instances/x.png   (instances/ optional)
    root/val/...  or  root/test/...                                                   (validation)

Names may carry per-folder suffixes that are dropped before matching (``label_suffix=_gtFine_labelIds``,
``image_suffix=_leftImg8bit``, ``instance_suffix=_gtFine_instanceIds`` for Cityscapes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from gan_translate.data.datamodule import TranslationDataModule, _require_root
from gan_translate.data.datasets import DataError, list_images, read_image
from gan_translate.data.synthetic import LABELS, _generator, render_facade
from gan_translate.networks.pix2pixhd import MAX_LABEL_NC, encode_label_ids
from gan_translate.ranges import PositiveInt

SINGLE_CHANNEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")


def read_map(path: Path) -> Image.Image:
    """A label or instance map as stored (the project's image reader would turn palette indices into colours
    and scale 16-bit ids to 8 bits); EXIF orientation applied, as to the photos."""
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"cannot read map {path}: {error}") from error


def label_ids_of(image: Image.Image, label_nc: int) -> torch.Tensor:
    """1 x H x W class ids (uint8) of a single-channel label image (palette images give their palette indices).
    ValueError, saying what the image is, for a colour image or ids outside 0..label_nc-1; callers name the file."""
    if image.mode not in SINGLE_CHANNEL_MODES:
        raise ValueError(f"its mode is {image.mode}, not single-channel class ids (8-bit grey or palette PNG)")
    ids = np.asarray(image).astype(np.int64)
    if ids.min() < 0 or ids.max() >= label_nc:
        raise ValueError(f"it holds class ids {ids.min()}..{ids.max()}, outside 0..{label_nc - 1}")
    return torch.from_numpy(ids.astype(np.uint8))[None]


def read_label_map(path: Path, label_nc: int) -> torch.Tensor:
    """1 x H x W class ids (uint8) from a single-channel PNG; palette (P) images give their palette indices."""
    try:
        return label_ids_of(read_map(path), label_nc)
    except ValueError as error:
        raise DataError(
            f"label map {path}: {error}, for data.label_nc={label_nc}. For colour label images set data.label_nc=0"
        ) from error


def read_instance_map(path: Path) -> torch.Tensor:
    """1 x H x W instance ids (int32): grey/16-bit/32-bit maps as they are, colour maps one id per colour."""
    image = read_map(path)
    if image.mode in SINGLE_CHANNEL_MODES:
        ids = np.asarray(image).astype(np.int64)
    else:
        rgb = np.asarray(image.convert("RGB")).astype(np.int64)
        ids = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if ids.max() >= 2**31:
        raise DataError(f"instance map {path}: ids up to {ids.max()} do not fit in 32 bits")
    return torch.from_numpy(ids.astype(np.int32))[None]


def finish_item(label: torch.Tensor, photo: torch.Tensor, instances: torch.Tensor | None, label_nc: int,
                transform: Callable | None, name: str, where: str) -> dict:
    """Apply the paired transform (NEAREST for the maps) and bring every part to its model encoding."""
    label = tv_tensors.Mask(label) if label_nc else tv_tensors.Image(label)
    parts = [label, tv_tensors.Image(photo)] + ([tv_tensors.Mask(instances)] if instances is not None else [])
    if transform is not None:
        try:
            parts = transform(*parts)
        except ValueError as error:
            raise DataError(f"{where}: {error}. Use a smaller data.crop_size or another data.preprocess") from error
    label, photo = parts[0], parts[1]
    item = {
        "A": encode_label_ids(label.as_subclass(torch.Tensor)) if label_nc else label.as_subclass(torch.Tensor),
        "B": photo.as_subclass(torch.Tensor),
        "name": name,
    }
    if instances is not None:
        item["inst"] = parts[2].as_subclass(torch.Tensor).float()
    return item


def _no_device_cache(kwargs: dict) -> None:
    if kwargs.get("device_cache"):
        raise DataError("data.device_cache keeps uint8 A/B images only; label and instance maps (pix2pixHD data) "
                        "are not supported: leave data.device_cache=false")


def files_by_stem(folder: Path, suffix: str, what: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in list_images(folder, what=what):
        stem = path.stem[: -len(suffix)] if suffix and path.stem.endswith(suffix) else path.stem
        if stem in files:
            raise DataError(f"{what}: {files[stem].name} and {path.name} in {folder} have the same name")
        files[stem] = path
    return files


class LabelFoldersDataset(Dataset):
    """``root/<split>/{labels,images[,instances]}``, matched by file name (suffixes removed)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        label_nc: int = 0,
        instance: bool = False,
        input_nc: int = 3,
        output_nc: int = 3,
        transform: Callable | None = None,
        label_dir: str = "labels",
        image_dir: str = "images",
        instance_dir: str = "instances",
        label_suffix: str = "",
        image_suffix: str = "",
        instance_suffix: str = "",
    ) -> None:
        if not 0 <= label_nc <= MAX_LABEL_NC:
            raise DataError(f"data.label_nc must be in 0..{MAX_LABEL_NC} (label maps are 8-bit), got {label_nc}")
        folder = Path(root) / split
        labels = files_by_stem(folder / label_dir, label_suffix, f"{split} label maps")
        images = files_by_stem(folder / image_dir, image_suffix, f"{split} images")
        folders = [(labels, label_dir), (images, image_dir)]
        instances = None
        if instance:
            if not (folder / instance_dir).is_dir():
                raise DataError(
                    f"data.instance=true but {folder / instance_dir} does not exist; set data.instance=false "
                    "to train without instance maps"
                )
            instances = files_by_stem(folder / instance_dir, instance_suffix, f"{split} instance maps")
            folders.append((instances, instance_dir))
        names = set(labels)
        for files, _ in folders[1:]:
            names &= set(files)
        unmatched = {name: [d for files, d in folders if name not in files]
                     for name in sorted(set().union(*(files for files, _ in folders)) - names)}
        if unmatched:
            examples = ", ".join(f"{name} (not in {'/'.join(missing)})" for name, missing in list(unmatched.items())[:4])
            raise DataError(
                f"{folder}: {len(unmatched)} file names are not in every folder, e.g. {examples}. Files are matched "
                "by name after removing data.label_suffix / image_suffix / instance_suffix"
            )
        self.items = [(name, labels[name], images[name], instances[name] if instances else None)
                      for name in sorted(names)]
        self.label_nc, self.input_nc, self.output_nc = label_nc, input_nc, output_nc
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        name, label_path, image_path, instance_path = self.items[index]
        if self.label_nc:
            label = read_label_map(label_path, self.label_nc)
        else:
            label = TF.to_image(read_image(label_path, self.input_nc))
        photo = TF.to_image(read_image(image_path, self.output_nc))
        instances = read_instance_map(instance_path) if instance_path is not None else None
        for path, part in ((image_path, photo), (instance_path, instances)):
            if part is not None and part.shape[-2:] != label.shape[-2:]:
                raise DataError(
                    f"{path} is {part.shape[-1]}x{part.shape[-2]} but its label map {label_path} is "
                    f"{label.shape[-1]}x{label.shape[-2]}; they must have the same size"
                )
        return finish_item(label, photo, instances, self.label_nc, self.transform, name, str(label_path))


class LabelFoldersDataModule(TranslationDataModule):
    """Label maps (+ optional instance maps) -> photos from ``root/<split>/{labels,images,instances}``."""

    def __init__(
        self,
        root: str,
        label_nc: int = 0,
        instance: bool = False,
        label_dir: str = "labels",
        image_dir: str = "images",
        instance_dir: str = "instances",
        label_suffix: str = "",
        image_suffix: str = "",
        instance_suffix: str = "",
        **kwargs,
    ) -> None:
        _no_device_cache(kwargs)
        super().__init__(**kwargs)
        self.root, self.label_nc, self.instance = _require_root(root), label_nc, instance
        self.folders = {"label_dir": label_dir, "image_dir": image_dir, "instance_dir": instance_dir,
                        "label_suffix": label_suffix, "image_suffix": image_suffix, "instance_suffix": instance_suffix}

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        if not (self.root / split).is_dir():
            return None
        return LabelFoldersDataset(
            self.root, split, self.label_nc, self.instance, self.input_nc, self.output_nc, self.transform(train),
            **self.folders,
        )


# ----- embedded data: the synthetic facades as label ids + instance maps -----
FACADE_CLASSES = list(LABELS)  # wall, window, door, balcony, cornice, sky -> ids 0..5
FACADE_THINGS = ("window", "door", "balcony")  # countable objects: one instance each, as Cityscapes' "things"


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """4-connected components of a boolean H x W mask: 1..K inside, 0 outside (label propagation; small maps)."""
    height, width = mask.shape
    ids = torch.where(mask, torch.arange(1, height * width + 1).view(height, width), torch.zeros((), dtype=torch.long))
    while True:
        grown = ids.clone()
        grown[1:] = torch.maximum(grown[1:], ids[:-1])
        grown[:-1] = torch.maximum(grown[:-1], ids[1:])
        grown[:, 1:] = torch.maximum(grown[:, 1:], ids[:, :-1])
        grown[:, :-1] = torch.maximum(grown[:, :-1], ids[:, 1:])
        grown = grown * mask
        if torch.equal(grown, ids):
            break
        ids = grown
    _, compact = torch.unique(ids, return_inverse=True)  # background 0 stays 0 (the smallest value)
    return compact if bool((~mask).any()) else compact + 1


def facade_label_maps(label_rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ids, instance ids) of a rendered facade label image; things get class * 1000 + k, as Cityscapes."""
    ids = torch.zeros(label_rgb.shape[1:], dtype=torch.long)
    for class_id, name in enumerate(FACADE_CLASSES):
        colour = torch.tensor(LABELS[name], dtype=label_rgb.dtype).view(3, 1, 1)
        ids[(label_rgb == colour).all(0)] = class_id
    instances = ids.clone()
    for name in FACADE_THINGS:
        class_id = FACADE_CLASSES.index(name)
        components = connected_components(ids == class_id)
        instances = torch.where(components > 0, class_id * 1000 + components, instances)
    return ids, instances


class SyntheticLabelFacades(Dataset):
    """``SyntheticFacades`` with the pix2pixHD inputs: label ids (6 classes) and instance maps.

    ``width`` wider than ``size`` (the height) renders a street: square facades side by side, cropped to width."""

    def __init__(self, length: int = 400, size: int = 64, split: str = "train", seed: int = 0,
                 instance: bool = True, transform: Callable | None = None, width: int | None = None) -> None:
        self.length, self.size, self.split, self.seed = length, size, split, seed
        self.instance, self.transform, self.width = instance, transform, width or size

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        gen = _generator(self.seed, self.split, index)
        tiles = [render_facade(self.size, gen) for _ in range(-(-self.width // self.size))]
        label_rgb, photo = (torch.cat(parts, 2)[:, :, : self.width] for parts in zip(*tiles, strict=True))
        ids, instances = facade_label_maps(label_rgb)
        return finish_item(ids[None].to(torch.uint8), photo, instances[None].to(torch.int32) if self.instance else None,
                           len(FACADE_CLASSES), self.transform, f"{self.split}_{index:05d}", "synthetic facades")


class SyntheticLabelFacadesDataModule(TranslationDataModule):
    """The embedded pix2pixHD data: facade label maps (6 classes) + instance maps -> facade photos, ``size``
    high and ``width`` wide (None: square). A ``label_nc`` above 6 gives the networks a dataset's class count
    (e.g. Cityscapes' 35, for benchmarks); the extra classes never occur."""

    def __init__(self, size: PositiveInt = 64, train_length: PositiveInt = 400, val_length: PositiveInt = 32,
                 seed: int = 0,
                 label_nc: int = len(FACADE_CLASSES), instance: bool = True, width: PositiveInt | None = None,
                 **kwargs) -> None:
        if not len(FACADE_CLASSES) <= label_nc <= MAX_LABEL_NC:
            raise DataError(f"the synthetic facades have {len(FACADE_CLASSES)} classes ({', '.join(FACADE_CLASSES)}); "
                            f"data.label_nc must be {len(FACADE_CLASSES)}..{MAX_LABEL_NC}, got {label_nc}")
        if width is not None and width < 1:
            raise DataError(f"data.width must be a positive number of pixels or null (square), got {width}")
        _no_device_cache(kwargs)
        kwargs.setdefault("preprocess", "none")
        super().__init__(**kwargs)
        self.size, self.seed, self.label_nc, self.instance = size, seed, label_nc, instance
        self.width = width or size
        self.lengths = {"train": train_length, "val": val_length, "test": val_length}

    def source_image_size(self) -> tuple[int, int]:
        return self.size, self.width

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        return SyntheticLabelFacades(self.lengths[split], self.size, split, self.seed, self.instance,
                                     self.transform(train), self.width)
