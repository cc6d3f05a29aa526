"""LightningDataModules: one base that owns loaders and preprocessing, one subclass per data layout.

Subclasses only say how to build a split's dataset (``make_dataset``); batch size, workers and the
paired/unpaired preprocessing are shared. Validation uses ``val`` when it exists, else ``test``, and
says so (a warning), since metrics and checkpoint selection then see the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import tv_tensors

from gan_translate.data.datasets import (
    AlignedDataset,
    DataError,
    PairedFoldersDataset,
    SkipBadImages,
    UnalignedDataset,
    check_direction,
)
from gan_translate.data.device_cache import KEY as DEVICE_CACHE_KEY
from gan_translate.data.device_cache import DeviceCache
from gan_translate.data.resumable import resumable_loader
from gan_translate.data.synthetic import SyntheticFacades, SyntheticShapes
from gan_translate.data.transforms import CROPPING_MODES, build_transform
from gan_translate.ranges import NonNegativeInt, PositiveInt


class TranslationDataModule(pl.LightningDataModule):
    """Shared loaders and preprocessing. ``input_nc``/``output_nc`` are read by the model config."""

    paired: bool = True
    # Whether the images on disk hold A and B side by side (predict then splits such inputs).
    pairs_side_by_side: bool = False

    def __init__(
        self,
        batch_size: PositiveInt = 1,
        num_workers: NonNegativeInt = 2,
        input_nc: int = 3,
        output_nc: int = 3,
        preprocess: str = "resize_and_crop",
        load_size: int = 286,
        crop_size: int = 256,
        flip: bool = True,
        val_batch_size: PositiveInt | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        drop_last: bool = False,
        on_bad_image: str = "raise",
        device_cache: bool = False,
    ) -> None:
        super().__init__()
        if on_bad_image not in ("raise", "skip"):
            raise DataError(f"data.on_bad_image must be raise or skip, got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_batch_size = val_batch_size or batch_size
        self.input_nc, self.output_nc = input_nc, output_nc
        self.preprocess, self.load_size, self.crop_size, self.flip = preprocess, load_size, crop_size, flip
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.drop_last = drop_last
        # Training split decoded once and kept on the training device (gan_translate/data/device_cache.py).
        self.device_cache = device_cache
        self.train_cache: DeviceCache | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        build_transform(preprocess)  # validates the preprocess name before any data is touched

    def transform(self, train: bool):
        return build_transform(self.preprocess, self.load_size, self.crop_size, self.flip, train)

    def source_image_size(self) -> tuple[int, int] | None:
        """(H, W) of every image before preprocessing, when the config fixes it (synthetic data); None for
        files, whose sizes only the files know."""
        return None

    def train_image_size(self) -> tuple[int, int] | None:
        """(H, W) of the training images as they reach the networks, from the config alone; None when it
        depends on the files (``preprocess`` none or scale_width on files). Used to check sizes before training."""
        if self.preprocess in CROPPING_MODES:  # every training image ends as a crop_size square
            return self.crop_size, self.crop_size
        source = self.source_image_size()
        return None if source is None else self.size_after_transform(source)

    def size_after_transform(self, source: tuple[int, int]) -> tuple[int, int]:
        """(H, W) that a (H, W) file becomes in training. The real transform on a blank image: exactly what the
        loader will produce, without reading data (and without drawing from the seeded random stream that
        training uses)."""
        blank = tv_tensors.Image(torch.zeros(self.input_nc, *source, dtype=torch.uint8))
        with torch.random.fork_rng(devices=[]):
            height, width = self.transform(train=True)(blank).shape[-2:]
        return int(height), int(width)

    def file_sizes(self) -> dict[str, dict[tuple[int, int], str]]:
        """{split: {(H, W) of the images as stored: the first file of that size}} for the training and validation
        sets whose datasets know their files' sizes from the headers (``source_sizes``), after ``setup("fit")``."""
        sizes = {}
        for split, dataset in (("training", self.train_set), ("validation", self.val_set)):
            dataset = dataset.dataset if isinstance(dataset, SkipBadImages) else dataset
            if hasattr(dataset, "source_sizes"):
                sizes[split] = dataset.source_sizes()
        return sizes

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        """The dataset of ``split``, or None if that split does not exist."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = self.make_dataset("train", train=True)
            if self.train_set is None:
                raise DataError(f"{type(self).__name__}: no training split found{self._under_root()}")
        if stage in ("fit", "validate", None) and self.val_set is None:
            self.val_set = self.make_dataset("val", train=False)
            if self.val_set is None:
                self.val_set = self.make_dataset("test", train=False)
                if self.val_set is not None:
                    rank_zero_warn(
                        f"{type(self).__name__}: there is no val split, so validation uses the TEST split: val/* "
                        "metrics, and any checkpoint selected by them, are measured on test data. Add a val "
                        "split to keep the test split unseen."
                    )
                elif stage == "fit":
                    rank_zero_warn(
                        f"{type(self).__name__}: no val (or test) split found{self._under_root()}, so this run has no "
                        "validation: "
                        "no val/* metrics and no best checkpoint (last.ckpt is still saved; sample grids show training "
                        "images). The split folders are named val/ (valA/, valB/) or test/."
                    )
        if stage in ("test", None) and self.test_set is None:
            self.test_set = self.make_dataset("test", train=False)
        if self.on_bad_image == "skip":
            self.train_set, self.val_set, self.test_set = (
                SkipBadImages(ds) if ds is not None and not isinstance(ds, SkipBadImages) else ds
                for ds in (self.train_set, self.val_set, self.test_set)
            )
        if self.device_cache and self.train_set is not None and self.train_cache is None:
            self.train_cache = DeviceCache.build(self)

    def _under_root(self) -> str:
        """Where the splits were looked for, for messages (" under data.root=..."); empty for the embedded data."""
        return f" under data.root={self.root}" if getattr(self, "root", None) else ""

    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool) -> DataLoader | list:
        if dataset is None:
            return []
        workers = {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                   "persistent_workers": self.persistent_workers, "collate_fn": collate_one_size}
        if shuffle:  # training: its position is saved in checkpoints (exact mid-epoch resume)
            return resumable_loader(dataset, batch_size, self.trainer, drop_last=self.drop_last, **workers)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **workers)

    def train_dataloader(self):
        if self.train_cache is not None:
            return self.train_cache.loader(self)
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        if self.train_cache is not None and isinstance(batch, dict) and DEVICE_CACHE_KEY in batch:
            return self.train_cache.batch(batch, device)  # images cut on the device from the cache
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def val_dataloader(self):
        return self._loader(self.val_set, self.val_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, self.val_batch_size, shuffle=False)


def collate_one_size(items: list) -> Any:
    """torch's default collate, with a DataError naming the items and the keys when a batch mixes image sizes
    (files kept at their own size by data.preprocess=none or scale_width) instead of torch.stack's own error."""
    try:
        return default_collate(items)
    except RuntimeError as error:
        if "stack expects each tensor to be equal size" not in str(error) or not isinstance(items[0], dict):
            raise
        images = [next((v for v in item.values() if isinstance(v, torch.Tensor) and v.ndim == 3), None)
                  for item in items[:8]]
        sizes = ", ".join(f"{item.get('name', i)}: {image.shape[-1]}x{image.shape[-2]}"
                          for i, (item, image) in enumerate(zip(items, images, strict=False)) if image is not None)
        raise DataError(
            f"a batch of {len(items)} holds images of different sizes ({sizes}): the files keep their own sizes "
            "(data.preprocess=none or scale_width); use data.batch_size=1 (and data.val_batch_size=1; for evaluate, "
            "batch_size=1), or crop to one size with data.preprocess=resize_and_crop"
        ) from error


def _require_root(root: str | Path | None) -> Path:
    if root is None or str(root) in ("", "???"):
        raise DataError("data.root is not set: pass data.root=PATH to the dataset folder")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root: folder {root} does not exist")
    return root


class AlignedDataModule(TranslationDataModule):
    """pix2pix A|B images under ``root/train``, ``root/val``, ``root/test``."""

    pairs_side_by_side = True

    def __init__(self, root: str, direction: str = "AtoB", square_halves: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        check_direction(direction)
        self.root, self.direction, self.square_halves = _require_root(root), direction, square_halves

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        if not (self.root / split).is_dir():
            return None
        return AlignedDataset(
            self.root, split, self.direction, self.input_nc, self.output_nc, self.transform(train),
            self.square_halves, skip_unreadable=self.on_bad_image == "skip",
        )


class PairedFoldersDataModule(AlignedDataModule):
    """Paired images in two folders ``root/{split}A`` and ``root/{split}B`` with matching file names."""

    pairs_side_by_side = False

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        if not (self.root / f"{split}A").is_dir() and not (self.root / f"{split}B").is_dir():
            return None
        return PairedFoldersDataset(
            self.root, split, self.direction, self.input_nc, self.output_nc, self.transform(train)
        )


class UnalignedDataModule(TranslationDataModule):
    """CycleGAN folders ``root/trainA``, ``root/trainB`` (+ ``valA/valB`` or ``testA/testB``)."""

    paired = False

    def __init__(self, root: str, serial: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.serial = _require_root(root), serial
        for domain in "AB":
            if not (self.root / f"train{domain}").is_dir():
                raise DataError(
                    f"CycleGAN data under {self.root} needs both trainA/ and trainB/; train{domain}/ is missing"
                )

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        if not any((self.root / f"{split}{domain}").is_dir() for domain in "AB"):
            return None
        transform = self.transform(train)
        # Evaluation pairs A and B in order so that runs are reproducible.
        return UnalignedDataset(
            self.root, split, self.input_nc, self.output_nc, transform, transform, self.serial or not train,
            check_files=self.on_bad_image == "raise",  # skip: bad files are skipped when read
        )


def check_rgb(datamodule: TranslationDataModule) -> None:
    """The embedded procedural data is RGB on both sides; other channel counts built networks it does not fit
    (a conv error in the first step)."""
    if (datamodule.input_nc, datamodule.output_nc) != (3, 3):
        raise DataError(
            f"data.input_nc={datamodule.input_nc}, data.output_nc={datamodule.output_nc}: the embedded "
            f"{type(datamodule).__name__} images are RGB (3 channels each); other channel counts need data on disk "
            "(data=aligned / unaligned / paired_folders)"
        )


class SyntheticFacadesDataModule(TranslationDataModule):
    """The embedded paired default: procedural label maps -> facade photos (no files needed)."""

    pairs_side_by_side = True  # its samples, saved as A|B images, are read like the aligned layout

    def __init__(
        self, size: PositiveInt = 64, train_length: PositiveInt = 400, val_length: PositiveInt = 32, seed: int = 0,
        direction: str = "AtoB", **kwargs,
    ) -> None:
        kwargs.setdefault("preprocess", "none")
        super().__init__(**kwargs)
        check_rgb(self)
        self.size, self.seed, self.direction = size, seed, check_direction(direction)
        self.lengths = {"train": train_length, "val": val_length, "test": val_length}

    def source_image_size(self) -> tuple[int, int]:
        return self.size, self.size

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        return SyntheticFacades(self.lengths[split], self.size, split, self.seed, self.direction, self.transform(train))


class SyntheticShapesDataModule(TranslationDataModule):
    """The embedded unpaired default: plain shapes (A) <-> striped shapes (B)."""

    paired = False

    def __init__(
        self, size: PositiveInt = 64, train_length: PositiveInt = 400, val_length: PositiveInt = 32, seed: int = 0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("preprocess", "none")
        super().__init__(**kwargs)
        check_rgb(self)
        self.size, self.seed = size, seed
        self.lengths = {"train": train_length, "val": val_length, "test": val_length}

    def source_image_size(self) -> tuple[int, int]:
        return self.size, self.size

    def make_dataset(self, split: str, train: bool) -> Dataset | None:
        transform = self.transform(train)
        return SyntheticShapes(self.lengths[split], self.size, split, self.seed, transform, transform)
