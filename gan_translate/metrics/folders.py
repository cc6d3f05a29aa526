"""Evaluate a folder of predictions against a folder of targets."""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from gan_translate.data.datasets import IMAGE_EXTENSIONS, index_by_stem, list_images
from gan_translate.data.images import read_image, same_shape

from .translation import TranslationMetrics

__all__ = ["IMAGE_EXTENSIONS", "check_enough_images", "evaluate_folders", "load_image"]


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> Tensor:
    """Read an image as RGB with the one image reader (as training reads it: EXIF orientation, 16-bit, alpha on
    white), optionally resize to ``size=(width, height)`` (bicubic), return 3 x H x W in [-1, 1]."""
    img = read_image(path, 3)
    if size is not None and img.size != tuple(size):
        img = img.resize(tuple(size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)


def check_enough_images(metrics: TranslationMetrics, counts: dict[str, int]) -> None:
    """FID and KID compare the statistics of two image sets, which one image cannot give: refuse before any image
    is translated or scored (training's validation reports NaN instead, with a warning). ``counts`` maps each set's
    description (e.g. "prediction folder 'out'") to its number of images."""
    keys = metrics.output_keys
    needs = [name.upper() for name in ("fid", "kid") if name in keys or f"{name}_mean" in keys]
    few = [f"{where} has {number}" for where, number in counts.items() if number < 2]
    if needs and few:
        names = " and ".join(needs)
        raise ValueError(
            f"{names} {'needs' if len(needs) == 1 else 'need'} at least 2 images on each side: {', '.join(few)}. "
            f"Score more images, or leave {names} out "
            f"({' '.join(f'metrics.collection.{name.lower()}=false' for name in needs)})"
        )


def _batches(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def evaluate_folders(
    pred_dir: str | os.PathLike,
    target_dir: str | os.PathLike,
    metrics: TranslationMetrics,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Compute ``metrics`` over prediction/target image pairs matched by file stem.

    ``pred_dir/x.png`` is paired with ``target_dir/x.<any image extension>``. Every stem must exist on both sides,
    otherwise a ValueError lists the unmatched names. Images are read as RGB by ``load_image``. If a target's size
    differs from its prediction's, the *target* is resized (bicubic) to the prediction's size, so metrics are
    measured at the resolution the model produced; a warning names the targets whose aspect ratio that changes.
    Predictions within a batch may differ in size from each other only if ``batch_size=1``; otherwise the batch is
    split by size automatically.

    ``metrics`` is reset first and left holding this evaluation's state. Returns the computed metrics plus
    ``num_images`` (number of pairs evaluated; ``max_images`` of ``metrics`` may cap what the metrics saw).

    Unpaired ``metrics`` (``paired=False``: e.g. CycleGAN's horse->zebra outputs against the test zebras) compare
    the two folders as distributions (FID/KID): any file names and counts; every image is resized to the first
    prediction's size. ``num_targets`` is then returned too.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pred_files, target_files = list_images(pred_dir, "prediction folder"), list_images(target_dir, "target folder")
    check_enough_images(metrics, {f"prediction folder {str(pred_dir)!r}": len(pred_files),
                                  f"target folder {str(target_dir)!r}": len(target_files)})
    if not metrics.paired:
        return _evaluate_unpaired(pred_files, target_files, metrics, batch_size, device)
    preds = index_by_stem(pred_files, "prediction folder")
    targets = index_by_stem(target_files, "target folder")
    only_pred = sorted(set(preds) - set(targets))
    only_target = sorted(set(targets) - set(preds))
    if only_pred or only_target:
        msg = [
            f"prediction folder {str(pred_dir)!r} and target folder {str(target_dir)!r} do not match by file name:"
        ]
        if only_pred:
            msg.append(f"{len(only_pred)} without target: {_names(only_pred)}")
        if only_target:
            msg.append(f"{len(only_target)} without prediction: {_names(only_target)}")
        raise ValueError(" ".join(msg))

    stems = sorted(preds)
    reshaped: list[tuple[str, int, int, int, int]] = []  # (target name, its size, the prediction's size)
    for stem in stems:  # before scoring anything: header reads only (an unreadable file is reported when read)
        try:
            with Image.open(preds[stem]) as image, Image.open(targets[stem]) as target:
                problem = metrics.size_problem(image.height, image.width)
                (pw, ph), (tw, th) = image.size, target.size
        except OSError:
            continue
        if problem:
            raise ValueError(f"prediction {preds[stem]}: {problem}")
        if not same_shape((tw, th), (pw, ph)):
            reshaped.append((targets[stem].name, tw, th, pw, ph))
    if reshaped:
        examples = "; ".join(f"{name} {tw}x{th} -> {pw}x{ph}" for name, tw, th, pw, ph in reshaped[:3])
        pairs = any(tw == 2 * th and pw == ph for _, tw, th, pw, ph in reshaped)
        warnings.warn(
            f"{len(reshaped)} target(s) have another aspect ratio than their predictions and are stretched to them "
            f"(e.g. {examples})" + (": 2:1 targets look like A|B pair images; score against their B halves, or use "
                                    "evaluate ckpt_path=..., which splits them" if pairs else ""),
            stacklevel=2,
        )
    if device is not None:
        metrics.to(device)
    metrics.reset()
    for chunk in _batches(stems, batch_size):
        fakes = [load_image(preds[s]) for s in chunk]
        reals = [
            load_image(targets[s], size=(f.shape[2], f.shape[1])) for s, f in zip(chunk, fakes, strict=True)
        ]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(fakes):
            groups.setdefault(tuple(f.shape[1:]), []).append(i)
        for idx in groups.values():
            fake = torch.stack([fakes[i] for i in idx]).to(metrics.device)
            real = torch.stack([reals[i] for i in idx]).to(metrics.device)
            metrics.update(fake, real)
    result = metrics.compute()
    result["num_images"] = len(stems)
    return result


def _evaluate_unpaired(preds: list, targets: list, metrics: TranslationMetrics, batch_size: int,
                       device) -> dict[str, float]:
    if device is not None:
        metrics.to(device)
    metrics.reset()
    first = load_image(preds[0])
    size = (first.shape[2], first.shape[1])
    empty = first.new_empty((0, *first.shape))

    def stack(paths: list) -> Tensor:
        return torch.stack([load_image(p, size=size) for p in paths]) if paths else empty

    for fake_paths, real_paths in itertools.zip_longest(_batches(preds, batch_size), _batches(targets, batch_size),
                                                        fillvalue=[]):
        metrics.update(stack(fake_paths).to(metrics.device), stack(real_paths).to(metrics.device))
    result = metrics.compute()
    result["num_images"], result["num_targets"] = len(preds), len(targets)
    return result


def _names(stems: list[str], limit: int = 20) -> str:
    shown = ", ".join(stems[:limit])
    return shown + (f", ... ({len(stems) - limit} more)" if len(stems) > limit else "")
