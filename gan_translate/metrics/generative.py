"""Metrics for generation from noise (and labels), measured with a small classifier of the real data.

The classifier is a few conv layers trained on the real train split of a class-per-folder dataset
(``root/train/<class>/*.png``, classes in sorted folder order, as in ``torchvision.datasets.ImageFolder``) and
cached by a hash of that data, so every evaluation of a dataset scores with the same network. From it:

* ``class_accuracy``: the share of class-conditional samples (cGAN, supervised AAE) that the classifier
  assigns to the label they were asked for.
* ``code_accuracy``: InfoGAN's categorical code is learned without labels, so code ``k`` may draw any digit;
  the accuracy counts samples whose predicted class is the one matched to their code by the best one-to-one
  code-to-class matching (Hungarian algorithm on the code x class count matrix), as in the InfoGAN paper's
  "5 % error" on MNIST.
* ``classifier_fid``: the Fréchet distance between the classifier's penultimate features of samples and of real
  images (torchmetrics' FID with the classifier as its feature network). Its scale is not the Inception FID's:
  compare it only between runs on the same data.
* ``fid`` / ``kid_mean`` / ``kid_std`` (off by default): the Inception metrics of :class:`TranslationMetrics`.

Images enter as ``N x C x H x W`` floats in ``[-1, 1]``; samples of another size or channel count than the
classifier's data are resized / converted on the way in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance

from gan_translate.data.datasets import DataError, convert, list_images, read_image

from .translation import TranslationMetrics

__all__ = [
    "CACHE_ENV",
    "DigitClassifier",
    "GenerativeMetrics",
    "cache_dir",
    "class_folder_files",
    "data_hash",
    "frechet_distance",
    "load_or_train_classifier",
    "matched_accuracy",
]

CACHE_ENV = "GAN_TRANSLATE_CACHE"
# Bump when the classifier's architecture or training recipe changes: old cache files are then ignored.
CLASSIFIER_VERSION = 1
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where downloaded or derived weights are kept: ``$GAN_TRANSLATE_CACHE``, else ``~/.cache/gan_translate``."""
    value = os.environ.get(CACHE_ENV, "")
    return Path(os.path.expanduser(value)) if value else Path(os.path.expanduser("~")) / ".cache" / "gan_translate"


# ---------------------------------------------------------------------------------------------- the classifier
class DigitClassifier(nn.Module):
    """Two conv blocks (two 3x3 convs with batch norm each, then 2x max pooling), a 128-d feature layer and a
    linear read-out. ``features(x)`` is the penultimate layer used for the classifier FID.

    Input: ``N x C x H x W`` in ``[-1, 1]``; images of another size than ``image_size`` are resized (bilinear,
    antialiased) and 1 <-> 3 channels converted, so samples of any generator size can be scored.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, width: int = 32,
                 num_features: int = 128) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.num_features = num_features

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.trunk = nn.Sequential(
            *block(in_channels, width), *block(width, width), nn.MaxPool2d(2),
            *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),
            # A fixed 4x4 grid keeps the head the same for 28 / 32 / 64 px data.
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(2 * width * 16, num_features), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(num_features, num_classes)

    def fit_input(self, x: Tensor) -> Tensor:
        """Bring ``x`` to this classifier's channels and size."""
        if x.ndim != 4:
            raise ValueError(f"the classifier expects N x C x H x W images, got shape {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] != self.in_channels:
            if x.shape[1] == 1 and self.in_channels == 3:
                x = x.expand(-1, 3, -1, -1)
            elif x.shape[1] == 3 and self.in_channels == 1:
                x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise ValueError(f"the classifier takes {self.in_channels}-channel images, got {x.shape[1]} channels")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(self.fit_input(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


class _PenultimateFeatures(nn.Module):
    """The classifier's feature layer as a torchmetrics ``feature=`` network (frozen, always in eval mode)."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _PenultimateFeatures:  # noqa: ARG002 - always eval
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)


# ---------------------------------------------------------------------------------------------- data and cache
def class_folder_files(folder: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted subfolder names) and ``(file, class index)`` pairs of a class-per-folder split."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"classifier data: folder {folder} does not exist (expected class subfolders in it)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"classifier data: {folder} needs at least 2 class subfolders, found {classes}")
    files = [(path, index) for index, name in enumerate(classes)
             for path in list_images(folder / name, f"class {name!r}")]
    return classes, files


def data_hash(folders: Sequence[str | os.PathLike]) -> str:
    """SHA-256 over every image of the class folders: relative path (class/file name) and bytes.

    Content, not modification times: copying the data elsewhere keeps the hash, editing one image changes it.
    """
    digest = hashlib.sha256()
    for folder in folders:
        folder = Path(folder)
        digest.update(f"[{folder.name}]".encode())
        for path, _ in class_folder_files(folder)[1]:
            digest.update(f"{path.parent.name}/{path.name}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_class_folder(folder: str | os.PathLike, channels: int | None = None,
                      size: int | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """All images of a class-per-folder split as ``N x C x S x S`` in ``[-1, 1]``, their labels and class names.

    ``channels`` / ``size`` default to the first image's (grayscale -> 1, else 3; its height); the images are
    small (a classifier's data), so they are held in memory.
    """
    classes, files = class_folder_files(folder)
    first = read_image(files[0][0])
    channels = channels or (1 if first.mode in ("L", "I", "I;16", "1", "LA") else 3)
    size = size or first.size[1]
    images = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        image = convert(read_image(path), channels)
        if image.size != (size, size):
            image = image.resize((size, size), resample=3)  # bicubic
        images[i] = np.asarray(image).reshape(size, size, channels)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return x, torch.tensor([label for _, label in files]), classes


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Small random rotations, shifts and scalings per image, so the classifier is not thrown by the slightly
    off-centre digits a generator draws."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(12)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.15
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Background is -1 (black): pad with it, not with 0 (grey).
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


@torch.no_grad()
def accuracy_of(classifier: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    was_training = classifier.training
    classifier.eval()
    correct = sum(int((classifier(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(images), batch_size))
    classifier.train(was_training)
    return correct / max(len(images), 1)


def train_classifier(images: Tensor, labels: Tensor, num_classes: int, epochs: int = 8, batch_size: int = 64,
                     lr: float = 1e-3, seed: int = 0) -> DigitClassifier:
    """Train a :class:`DigitClassifier` (Adam, cosine-decayed learning rate, augmentation) on in-memory images."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier = DigitClassifier(num_classes, images.shape[1], images.shape[-1])
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    steps = epochs * math.ceil(len(images) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    classifier.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), batch_size):
            index = order[i:i + batch_size]
            loss = F.cross_entropy(classifier(_augment(images[index], generator)), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return classifier.eval()


def load_or_train_classifier(root: str | os.PathLike, train_split: str = "train", val_split: str | None = "val",
                             epochs: int = 8, seed: int = 0, cache: str | os.PathLike | None = None,
                             ) -> tuple[DigitClassifier, dict[str, Any]]:
    """The classifier of the class-per-folder data under ``root`` (``root/<train_split>/<class>/``), from the cache
    when one was trained on exactly these files (see :func:`data_hash`) with these settings, else trained now
    and cached. Returns it (eval mode, frozen) and its record: classes, val accuracy, data hash, cache file.
    """
    root = Path(root)
    folders = [root / train_split] + ([root / val_split] if val_split and (root / val_split).is_dir() else [])
    settings = {"version": CLASSIFIER_VERSION, "epochs": epochs, "seed": seed,
                "splits": [f.name for f in folders]}
    key = hashlib.sha256((data_hash(folders) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()
    path = Path(cache) if cache is not None else cache_dir() / "classifiers" / f"digit_classifier_{key[:16]}.pt"
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        record = stored["record"]
        if record.get("key") == key:
            classifier = DigitClassifier(**record["shape"])
            classifier.load_state_dict(stored["state_dict"])
            log.info("classifier from cache %s (val accuracy %.4f)", path, record["val_accuracy"])
            return classifier.eval().requires_grad_(False), {**record, "cache_file": str(path), "cached": True}
    start = time.perf_counter()
    images, labels, classes = load_class_folder(folders[0])
    log.info("training the classifier on %d images of %s (%d classes), cached at %s",
             len(images), folders[0], len(classes), path)
    classifier = train_classifier(images, labels, len(classes), epochs=epochs, seed=seed)
    val_accuracy = math.nan
    if len(folders) > 1:
        val_images, val_labels, val_classes = load_class_folder(folders[1], images.shape[1], images.shape[-1])
        if val_classes != classes:
            raise DataError(f"classifier data: classes of {folders[1]} ({val_classes}) differ from {folders[0]} "
                            f"({classes})")
        val_accuracy = accuracy_of(classifier, val_images, val_labels)
    record = {
        "key": key, "data_root": str(root.resolve()), "classes": classes, "settings": settings,
        "shape": {"num_classes": len(classes), "in_channels": classifier.in_channels,
                  "image_size": classifier.image_size},
        "train_images": len(images), "val_accuracy": val_accuracy,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"state_dict": classifier.state_dict(), "record": record}, partial)
    partial.replace(path)  # atomic: a concurrent reader never sees half a file
    log.info("classifier val accuracy %.4f (%s)", val_accuracy, path)
    return classifier.requires_grad_(False), {**record, "cache_file": str(path), "cached": False}


# ---------------------------------------------------------------------------------------------- matching
def matched_accuracy(confusion: Tensor | np.ndarray) -> tuple[float, list[int]]:
    """Accuracy under the best one-to-one code -> class matching of a ``codes x classes`` count matrix.

    Returns the accuracy and, per code, its class (-1 for codes left unmatched when there are more codes than
    classes). ``scipy.optimize.linear_sum_assignment`` finds the matching with the most samples on it.
    """
    counts = np.asarray(confusion.cpu() if isinstance(confusion, Tensor) else confusion, dtype=np.float64)
    total = counts.sum()
    if counts.ndim != 2 or total <= 0:
        raise ValueError(f"matched_accuracy needs a non-empty 2-d count matrix, got shape {counts.shape}")
    codes, classes = linear_sum_assignment(counts, maximize=True)
    mapping = [-1] * counts.shape[0]
    for code, cls in zip(codes, classes, strict=True):
        mapping[int(code)] = int(cls)
    return float(counts[codes, classes].sum() / total), mapping


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Fréchet distance between two feature sets (``N x d``), with torchmetrics' FID arithmetic."""
    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"frechet_distance needs two N x d feature sets, got {tuple(features_a.shape)} and "
                         f"{tuple(features_b.shape)}")
    fid = FrechetInceptionDistance(feature=_Identity(features_a.shape[1]), normalize=True)
    fid.update(features_a.double(), real=True)
    fid.update(features_b.double(), real=False)
    return float(fid.compute())


class _Identity(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


class _CountMatrix(Metric):
    """``rows x cols`` counts of (row index, column index) pairs, summed across processes."""

    full_state_update = False
    counts: Tensor

    def __init__(self, rows: int, cols: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("counts", torch.zeros(rows, cols, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, rows: Tensor, cols: Tensor) -> None:
        flat = rows.long() * self.counts.shape[1] + cols.long()
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).view_as(self.counts)

    def compute(self) -> Tensor:
        return self.counts.clone()


# ---------------------------------------------------------------------------------------------- the collection
class GenerativeMetrics(nn.Module):
    """Classifier score and classifier FID of generated images (plus the Inception FID/KID if asked for).

    Args:
        classifier: a trained :class:`DigitClassifier`; or ``None`` with ``data_root``: the cached classifier of
            that data (trained on ``train_split`` when not cached yet, see :func:`load_or_train_classifier`).
        class_accuracy, code_accuracy, classifier_fid: switch each on or off. ``class_accuracy`` needs the asked
            labels in :meth:`update`, ``code_accuracy`` the categorical codes, ``classifier_fid`` real images.
        num_codes: number of categorical code values (``code_accuracy``); default: the number of classes.
        fid, kid, fid_weights, kid_subset_size: the Inception metrics, as in :class:`TranslationMetrics`.
        max_images: stop accumulating after this many samples / real images (per process); ``None``: no cap.
        cache_real_features: after the first ``compute()`` that saw at least 2 real images, the classifier FID
            and the Inception FID/KID keep the real images' features and later passes take only samples (the
            validation set is the same every epoch), as in :class:`TranslationMetrics`.
        paired: ignored (models pass it to every metrics factory; generated samples have no pixel targets).
    """

    _metrics: dict[str, Metric]

    def __init__(
        self,
        classifier: DigitClassifier | None = None,
        data_root: str | os.PathLike | None = None,
        train_split: str = "train",
        val_split: str | None = "val",
        classifier_epochs: int = 8,
        class_accuracy: bool = True,
        code_accuracy: bool = True,
        classifier_fid: bool = True,
        num_codes: int | None = None,
        fid: bool = False,
        kid: bool = False,
        fid_weights: str | os.PathLike | None = None,
        kid_subset_size: int = 100,
        max_images: int | None = None,
        cache_real_features: bool = False,
        paired: bool = False,  # noqa: ARG002 - see docstring
    ) -> None:
        super().__init__()
        self.classifier_record: dict[str, Any] = {}
        if classifier is None:
            if not data_root:
                raise ValueError("GenerativeMetrics needs a classifier or metrics.collection.data_root (a "
                                 "class-per-folder dataset with a train split); the embedded demo data "
                                 "(data=synthetic_classes) has no folder, so metrics=generative goes with "
                                 "data=image_folder / the mnist_* experiments")
            classifier, self.classifier_record = load_or_train_classifier(
                data_root, train_split, val_split, epochs=classifier_epochs)
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise ValueError(f"metrics max_images must be a positive int or null, got {max_images!r}")
        # Plain attributes (object.__setattr__): the classifier and metric states stay out of a model's state_dict.
        object.__setattr__(self, "classifier", classifier.eval().requires_grad_(False))
        self.max_images = max_images
        self.num_classes = classifier.num_classes
        self.num_codes = num_codes or self.num_classes
        metrics: dict[str, Metric] = {}
        if class_accuracy:
            metrics["class_accuracy"] = _CountMatrix(self.num_classes, self.num_classes)
        if code_accuracy:
            metrics["code_accuracy"] = _CountMatrix(self.num_codes, self.num_classes)
        if classifier_fid:
            metrics["classifier_fid"] = FrechetInceptionDistance(feature=_PenultimateFeatures(classifier),
                                                                 normalize=True)
        object.__setattr__(self, "_metrics", metrics)
        object.__setattr__(self, "_inception", TranslationMetrics(
            paired=False, l1=False, psnr=False, ssim=False, fid=fid, kid=kid, fid_weights=fid_weights,
            kid_subset_size=kid_subset_size, max_images=max_images,
            cache_real_features=cache_real_features) if fid or kid else None)
        self.cache_real_features = bool(cache_real_features)
        self._real_kept = False  # classifier_fid holds the real features of a complete pass
        self._seen = [0, 0]  # samples, real images (this process)
        self._device = torch.device("cpu")
        self.code_to_class: list[int] | None = None

    def _apply(self, fn, recurse: bool = True) -> GenerativeMetrics:
        super()._apply(fn, recurse)
        probe = fn(torch.zeros(1, device=self._device))
        if isinstance(probe, Tensor) and probe.device.type != "meta" and probe.device != self._device:
            self._device = probe.device
            self.classifier.to(self._device)
            for metric in self._metrics.values():
                metric.to(self._device)
            if self._inception is not None:
                self._inception.to(self._device)
        return self

    @property
    def needs(self) -> set[str]:
        """What :meth:`update` must be given besides the samples: ``labels``, ``codes``, ``real``."""
        wanted = {"class_accuracy": "labels", "code_accuracy": "codes", "classifier_fid": "real"}
        return {wanted[name] for name in self._metrics} | ({"real"} if self._inception is not None else set())

    def _take(self, x: Tensor | None, side: int) -> Tensor | None:
        if x is None or self.max_images is None:
            return x
        return x[: max(self.max_images - self._seen[side], 0)]

    @torch.no_grad()
    def update(self, fake: Tensor, real: Tensor | None = None, labels: Tensor | None = None,
               codes: Tensor | None = None) -> None:
        """Accumulate samples ``fake`` (with the ``labels`` they were asked for and/or their categorical
        ``codes``, one integer per sample) and/or ``real`` images; either side may come alone."""
        fake, labels, codes = (self._take(t, 0) for t in (fake, labels, codes))
        real = self._take(real, 1)
        for name, x in (("fake", fake), ("real", real)):
            if x is not None and x.ndim != 4:
                raise ValueError(f"GenerativeMetrics.update expects N x C x H x W images, got {name} of shape "
                                 f"{tuple(x.shape)}")
        if fake is not None and fake.shape[0]:
            fake = fake.to(self._device, torch.float32).clamp(-1, 1)
            predicted = self.classifier(fake).argmax(1)
            for name, given, size in (("class_accuracy", labels, self.num_classes),
                                      ("code_accuracy", codes, self.num_codes)):
                if name in self._metrics and given is not None:
                    given = given.to(self._device).long().view(-1)
                    if given.shape[0] != fake.shape[0] or given.min() < 0 or given.max() >= size:
                        raise ValueError(f"{name}: need one value in [0, {size}) per sample, got "
                                         f"{given.tolist()[:8]}... for {fake.shape[0]} samples")
                    self._metrics[name].update(given, predicted)
            if "classifier_fid" in self._metrics:
                self._metrics["classifier_fid"].update(fake, real=False)
            self._seen[0] += fake.shape[0]
        if real is not None and real.shape[0]:
            real = real.to(self._device, torch.float32).clamp(-1, 1)
            if "classifier_fid" in self._metrics and not self._real_kept:
                self._metrics["classifier_fid"].update(real, real=True)
            self._seen[1] += real.shape[0]
        if self._inception is not None:
            # TranslationMetrics takes both sides at once; an empty side is skipped there.
            empty = torch.empty(0, 1, 2, 2, device=self._device)
            self._inception.update(fake if fake is not None else empty, real if real is not None else empty)

    def compute(self) -> dict[str, float]:
        """``class_accuracy``, ``code_accuracy`` (after matching; the matching is kept in ``code_to_class``),
        ``classifier_fid`` and the Inception metrics, for those that received their inputs."""
        out: dict[str, float] = {}
        with warnings.catch_warnings():  # a metric whose inputs never came is skipped, not an error
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            counts = {name: metric.compute() for name, metric in self._metrics.items() if name != "classifier_fid"}
        for name, metric in self._metrics.items():
            if name == "classifier_fid":
                n_real = int(metric.real_features_num_samples)
                if min(n_real, int(metric.fake_features_num_samples)) >= 2:
                    out[name] = float(metric.compute())
                if self.cache_real_features and n_real >= 2:
                    self._real_kept = True
                    metric.reset_real_features = False
                continue
            if counts[name].sum() == 0:
                continue
            if name == "class_accuracy":
                out[name] = float(counts[name].diagonal().sum() / counts[name].sum())
            else:
                out[name], self.code_to_class = matched_accuracy(counts[name])
        if self._inception is not None:
            out.update(self._inception.compute())
        return out

    def reset(self) -> None:
        for metric in self._metrics.values():
            metric.reset()
        if self._inception is not None:
            self._inception.reset()
        self._seen = [0, 0]
        self.code_to_class = None

    def forward(self, fake: Tensor, real: Tensor | None = None, **kwargs: Tensor) -> None:
        self.update(fake, real, **kwargs)
