"""Training data kept on the training device: ``data.device_cache=true``.

The training split is decoded once, at ``setup("fit")``, into one uint8 tensor per domain (N x C x H x W),
taken after the deterministic part of the preprocessing (resize, scale_width, make-divisible), and moved to
the training device with the first batch. Per step, only the random parameters of the crops and flips are
drawn on the host: by the same calls, in the same order, from the same seeded generators as the normal
DataLoader path. The batch is then cut from the cached images on the device, flipped, and mapped to floats
through a 256-entry table computed with the normal path's own ToDtype/Normalize. So for one seed the batches
equal those of the normal path with ``num_workers=0`` bit for bit, on a CPU or a GPU, while no decode, no
DataLoader worker and no host-to-device image copy runs per step. Validation stays on the normal path.
"""

from __future__ import annotations

import logging
import random
import warnings
from typing import TYPE_CHECKING

import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from gan_translate.data.datasets import DataError, SkipBadImages, UnalignedDataset
from gan_translate.data.transforms import MakeDivisible, ScaleWidth, advice_of

if TYPE_CHECKING:
    from gan_translate.data.datamodule import TranslationDataModule

log = logging.getLogger(__name__)

# The batch key of the draws (cached image indices and random parameters) that the loader yields.
KEY = "device_cache"
# Steps that give the same output every time: applied once, to the cached images.
DETERMINISTIC_STEPS = (v2.Resize, v2.CenterCrop, ScaleWidth, MakeDivisible)
# Steps with random parameters: drawn per item on the host, applied on the device.
RANDOM_STEPS = (v2.RandomCrop, v2.RandomHorizontalFlip)
# Steps that map each pixel value on its own (per channel): folded into a uint8 -> float lookup table.
PER_VALUE_STEPS = (v2.ToDtype, v2.Normalize)


def split_transform(transform: v2.Compose) -> tuple[v2.Compose, list[v2.Transform], v2.Compose]:
    """(deterministic prefix, random steps, per-value steps) of a training transform, in this order; a
    DataError for any other arrangement, since caching could then freeze a random step or reorder steps."""
    steps = list(transform.transforms)
    kinds = ["fixed" if isinstance(s, DETERMINISTIC_STEPS) else "random" if isinstance(s, RANDOM_STEPS)
             else "value" if isinstance(s, PER_VALUE_STEPS) else "other" for s in steps]
    order = {"fixed": 0, "random": 1, "value": 2}
    if "other" in kinds or [order[k] for k in kinds] != sorted(order[k] for k in kinds):
        raise DataError(
            f"data.device_cache supports training transforms made of deterministic resizes "
            f"({', '.join(t.__name__ for t in DETERMINISTIC_STEPS)}), then RandomCrop/RandomHorizontalFlip, then "
            f"ToDtype/Normalize; got {[type(s).__name__ for s in steps]}. Use data.device_cache=false."
        )
    fixed, random_steps = kinds.count("fixed"), kinds.count("random")
    for step in steps[fixed : fixed + random_steps]:
        if isinstance(step, v2.RandomCrop) and (step.padding is not None or step.pad_if_needed):
            raise DataError("data.device_cache does not support RandomCrop with padding")
    def compose(part: list[v2.Transform]) -> v2.Compose:
        return v2.Compose(part or [v2.Identity()])

    return compose(steps[:fixed]), steps[fixed : fixed + random_steps], compose(steps[fixed + random_steps :])


def draw(steps: list[v2.Transform], probe: torch.Tensor) -> list[int]:
    """The random parameters of ``steps`` for one image of ``probe``'s size, drawn from the global torch
    generator exactly as the v2 transforms draw them (RandomCrop.make_params; the flip's ``torch.rand(1) < p``)."""
    params: list[int] = []
    for step in steps:
        if isinstance(step, v2.RandomCrop):
            crop = step.make_params([probe])
            params += [crop["top"], crop["left"]]
        else:
            params.append(int(torch.rand(1) < step.p))
    return params


def apply(steps: list[v2.Transform], image: torch.Tensor, params: list[int]) -> torch.Tensor:
    """``steps`` with drawn ``params`` on one cached image (crops are views; a flip is one kernel)."""
    for step in steps:
        if isinstance(step, v2.RandomCrop):
            (top, left), params = params[:2], params[2:]
            image = TF.crop(image, top, left, *step.size)
        else:
            flip, params = params[0], params[1:]
            image = TF.horizontal_flip(image) if flip else image
    return image


def param_count(steps: list[v2.Transform]) -> int:
    return sum(2 if isinstance(step, v2.RandomCrop) else 1 for step in steps)


def value_table(per_value: v2.Compose, channels: int) -> torch.Tensor:
    """channels x 256 table: ``per_value`` (the normal path's ToDtype/Normalize) applied to every uint8 value,
    so a table lookup gives the normal path's floats exactly, in one kernel and with no host tensors per step."""
    values = tv_tensors.Image(torch.arange(256, dtype=torch.uint8).repeat(channels, 1, 1))  # C x 1 x 256
    return torch.as_tensor(per_value(values))[:, 0, :].contiguous()


class RandomDraws(Dataset):
    """What item ``index`` of the normal training set draws, without its pixels: which cached A and B
    images it uses and the parameters of their random crops and flips. Drawn from the same generators, in the
    same order, as the normal datasets' ``__getitem__``: Python's ``random`` for an unaligned B pick, then the
    torch generator for A's steps, then for B's (paired data: one draw for both, as the joint v2 call does)."""

    def __init__(self, length: int, sizes: tuple[int, int], paired: bool, random_b: bool,
                 steps: list[v2.Transform], probes: tuple[torch.Tensor, torch.Tensor],
                 names: tuple[list[str], list[str] | None]) -> None:
        self.length, (self.n_a, self.n_b) = length, sizes
        self.paired, self.random_b = paired, random_b
        self.steps, self.probes, self.names = steps, probes, names

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        a = index % self.n_a
        if self.paired:
            b = a
        elif self.random_b:
            b = random.randrange(self.n_b)
        else:
            b = index % self.n_b
        params_a = draw(self.steps, self.probes[0])
        params_b = params_a if self.paired else draw(self.steps, self.probes[1])
        item = {KEY: torch.tensor([a, b, *params_a, *params_b]), "name": self.names[0][a]}
        if self.names[1] is not None:
            item["name_B"] = self.names[1][b]
        return item


class DeviceCache:
    """The decoded training split (uint8, on the training device after the first batch) and its draws."""

    def __init__(self, images: dict[str, torch.Tensor], draws: RandomDraws, steps: list[v2.Transform],
                 tables: dict[str, torch.Tensor]) -> None:
        self.images, self.draws, self.steps, self.tables = images, draws, steps, tables
        self.device = torch.device("cpu")
        self.channels = self._channel_indices()

    @property
    def nbytes(self) -> int:
        return sum(images.nbytes for images in self.images.values())

    @classmethod
    def build(cls, datamodule: TranslationDataModule) -> DeviceCache:
        """Decode ``datamodule``'s training split through the deterministic part of its training transform."""
        train_set = datamodule.train_set
        base = train_set.dataset if isinstance(train_set, SkipBadImages) else train_set
        transform = datamodule.transform(train=True)
        prefix, steps, per_value = split_transform(transform)
        if isinstance(base, UnalignedDataset):
            sizes, random_b = (len(base.files_a), len(base.files_b)), not base.serial
        else:
            sizes, random_b = (len(base), len(base)), False

        # The same dataset class with the deterministic prefix as its transform and in-order pairing
        # (make_dataset's evaluation pairing), so that item i holds A image i and B image i.
        datamodule.transform = lambda train: prefix
        try:
            serial = datamodule.make_dataset("train", train=False)
        finally:
            del datamodule.transform
        if datamodule.on_bad_image == "skip":
            serial = SkipBadImages(serial)
        images: dict[str, torch.Tensor] = {}
        names: dict[str, list[str]] = {"A": [], "B": []}
        has_name_b = False
        # Decoding draws nothing, but a DataLoader takes a base seed from the global generator: keep it intact
        # so that training draws what the normal path draws.
        with torch.random.fork_rng(devices=[]):
            loader = DataLoader(serial, batch_size=None, num_workers=datamodule.num_workers)
            for index, item in enumerate(loader):
                for domain, count in zip("AB", sizes, strict=True):
                    if index < count:
                        store(images, domain, count, index, item)
                        names[domain].append(item["name_B" if domain == "B" and "name_B" in item else "name"])
                if index == 0:
                    has_name_b = "name_B" in item
        probes = tuple(torch.zeros((), dtype=torch.uint8).expand(images[d].shape[1:]) for d in "AB")
        for domain, probe in zip("AB", probes, strict=True):
            check_crops(steps, probe, domain, advice_of(transform))
        draws = RandomDraws(len(train_set), sizes, datamodule.paired, random_b, steps, probes,
                            (names["A"], names["B"] if has_name_b else None))
        tables = {d: value_table(per_value, images[d].shape[1]) for d in "AB"}
        cache = cls(images, draws, steps, tables)
        log.info("data.device_cache: %s A + %s B training images, uint8, %.1f MB", tuple(images["A"].shape),
                 tuple(images["B"].shape), cache.nbytes / 2**20)
        return cache

    def loader(self, datamodule: TranslationDataModule) -> DataLoader:
        """The datamodule's own training loader (same sampler, same shuffling) over the draws, in this process:
        they are a few integers per item, so workers would only add latency (and draw from other generators)."""
        settings = datamodule.num_workers, datamodule.persistent_workers, datamodule.pin_memory
        datamodule.num_workers, datamodule.persistent_workers, datamodule.pin_memory = 0, False, False
        try:
            loader = datamodule._loader(self.draws, datamodule.batch_size, shuffle=True)
        finally:
            datamodule.num_workers, datamodule.persistent_workers, datamodule.pin_memory = settings
        # Lightning's advice to add workers does not apply to this loader.
        warnings.filterwarnings("ignore", message="The 'train_dataloader' does not have many workers",
                                category=PossibleUserWarning)
        return loader

    def to(self, device: torch.device) -> DeviceCache:
        if device != self.device:
            self.images = {d: images.to(device) for d, images in self.images.items()}
            self.tables = {d: table.to(device) for d, table in self.tables.items()}
            self.device = device
            self.channels = self._channel_indices()
        return self

    def _channel_indices(self) -> dict[str, torch.Tensor]:
        """1 x C x 1 x 1 channel indices per domain, for the table lookup."""
        return {d: torch.arange(t.shape[0], device=self.device).view(1, -1, 1, 1) for d, t in self.tables.items()}

    def batch(self, draws: dict, device: torch.device) -> dict:
        """The training batch of ``draws`` (a collated batch of RandomDraws items), built on ``device``."""
        self.to(torch.device(device))
        rows = draws[KEY].tolist()  # a host tensor: no device synchronisation
        count = param_count(self.steps)
        batch = {key: value for key, value in draws.items() if key != KEY}
        for domain, column, first in (("A", 0, 2), ("B", 1, 2 + count)):
            images = self.images[domain]
            crops = [apply(self.steps, images[row[column]], row[first : first + count]) for row in rows]
            stacked = torch.stack(crops).long()
            batch[domain] = self.tables[domain][self.channels[domain], stacked]
        return batch


def store(images: dict[str, torch.Tensor], domain: str, count: int, index: int, item: dict) -> None:
    """Put ``item[domain]`` (uint8, after the deterministic steps) into the cache tensor of ``domain``."""
    image = torch.as_tensor(item[domain])
    if image.dtype != torch.uint8:
        raise DataError(f"data.device_cache stores uint8 images; {item['name']} gives {image.dtype}")
    if domain not in images:
        images[domain] = torch.empty((count, *image.shape), dtype=torch.uint8)
    elif image.shape != images[domain].shape[1:]:
        raise DataError(
            f"data.device_cache needs every training image at one size after resizing: {domain} of "
            f"{item['name']} is {tuple(image.shape)}, the first is {tuple(images[domain].shape[1:])}. "
            "Use data.preprocess=resize_and_crop (one load_size for all), or data.device_cache=false."
        )
    images[domain][index] = image


def check_crops(steps: list[v2.Transform], probe: torch.Tensor, domain: str, advice: str) -> None:
    height, width = probe.shape[-2:]
    for step in steps:
        if isinstance(step, v2.RandomCrop) and (step.size[0] > height or step.size[1] > width):
            raise DataError(
                f"data.device_cache: the crop {tuple(step.size)} is larger than the {domain} images "
                f"({height}x{width} after resizing); {advice}"
            )
