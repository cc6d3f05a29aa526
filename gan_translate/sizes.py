"""Image sizes the networks can take: checked before training, and used by prediction to fit any size.

A network declares its sizes with plain attributes, all optional; a network without any of them (e.g. a
generator that takes noise) is not checked:

- ``size_divisor`` (int, default 1): H and W must be multiples of it;
- ``min_size`` (int, default 1): the smallest H and W (each side) with which a forward pass in train mode with a
  batch of one works (batch norm needs more than one value per channel, a conv at least its kernel);
- ``size_args`` (dict): the constructor arguments that set the two, named in errors as e.g. ``generator.num_downs=8``;
- ``args_for_size(height, width) -> dict | None``: arguments with which it would take that size (suggested).

A datamodule gives the size its training images reach the networks with, through ``train_image_size() ->
(H, W) | None``; None means only the files know, and the first training item is measured instead.
``check_training_sizes(model, datamodule)`` runs in ``gan_translate.train`` before the Trainer starts and raises
``SizeError`` naming the config keys and the nearest valid values.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from gan_translate.data.transforms import CROPPING_MODES, MAKE_DIVISIBLE
from gan_translate.errors import UsageError


class SizeError(UsageError, ValueError):
    """Training images that a network cannot take; the message names the keys and valid values."""


@dataclass(frozen=True)
class SizeRule:
    """Valid sides: multiples of ``divisor`` that are at least ``min_size``."""

    divisor: int = 1
    min_size: int = 1

    @classmethod
    def of(cls, network: nn.Module) -> SizeRule | None:
        """The rule a network declares, or None if it declares none."""
        divisor, smallest = getattr(network, "size_divisor", None), getattr(network, "min_size", None)
        if divisor is None and smallest is None:
            return None
        return cls(int(divisor or 1), int(smallest or 1))

    @classmethod
    def combined(cls, rules: Iterable[SizeRule]) -> SizeRule:
        """Sides that every one of ``rules`` accepts."""
        rules = list(rules)
        return cls(math.lcm(1, *(r.divisor for r in rules)), max([1, *(r.min_size for r in rules)]))

    def accepts(self, side: int) -> bool:
        return side >= self.min_size and side % self.divisor == 0

    @property
    def smallest(self) -> int:
        return self.at_least(1)

    def at_least(self, side: int) -> int:
        """The smallest valid side >= ``side``."""
        return -(-max(side, self.min_size) // self.divisor) * self.divisor

    def at_most(self, side: int) -> int | None:
        """The largest valid side <= ``side``, or None."""
        below = side // self.divisor * self.divisor
        return below if below >= self.min_size and below > 0 else None

    def nearest(self, side: int) -> int:
        """The valid side closest to ``side`` (the larger one on a tie)."""
        below, above = self.at_most(side), self.at_least(side)
        return above if below is None or above - side <= side - below else below

    def describe(self) -> str:
        if self.divisor > 1:
            at_least = f" and at least {self.min_size}" if self.min_size > self.divisor else ""
            return f"H and W must be multiples of {self.divisor}{at_least}"
        return f"H and W must be at least {self.min_size} (a batch of one in train mode)"


# ----- training -----
def check_training_sizes(model, datamodule) -> None:
    """Raise ``SizeError`` if a network of ``model`` cannot take the training images of ``datamodule``.

    Every network of ``model.networks()`` sees the training size (generators their input, discriminators
    real and generated images of that size, conditional ones both stacked). Networks that declare no size
    (see the module docstring) and datamodules without ``train_image_size`` are not checked.
    """
    networks = getattr(model, "networks", dict)()
    rules = {name: rule for name, net in networks.items() if (rule := SizeRule.of(net)) is not None}
    if not rules:
        return
    combined = SizeRule.combined(rules.values())
    _check_preprocess(datamodule, combined)
    size_of = getattr(datamodule, "train_image_size", None)
    if size_of is None:
        return
    size = size_of()
    if size is not None:
        origin, keys = _origin(datamodule, size)
        check_image_size(networks, size, f"training images ({origin})", _data_fix(keys, combined, datamodule))
        return
    preprocess = getattr(datamodule, "preprocess", None)
    kept = ("scales each file to data.load_size wide, keeping its aspect ratio" if preprocess == "scale_width"
            else "keeps each file's size")
    def fix(measured: tuple[int, int]) -> str:
        return (f"train on crops of one size: data.preprocess=resize_and_crop (or crop) with "
                f"data.crop_size={combined.nearest(min(measured))} (valid: {_valid_examples(combined)})")

    first = _first_item_sizes(datamodule)
    file_sizes = getattr(datamodule, "file_sizes", dict)()  # after the setup that _first_item_sizes ran
    for which, (measured, name) in first.items():
        checked = "; every file's size is checked next" if file_sizes else "; only this item was checked"
        what = (f"the first training item's {which} ({name}; data.preprocess={preprocess} {kept}, rounded down "
                f"to multiples of {MAKE_DIVISIBLE}{checked})")
        check_image_size(networks, measured, what, fix(measured))
    # Every file's size, from the headers (a later file of another size crashed inside a network, or in validation).
    for split, sizes in file_sizes.items():
        for source, name in sizes.items():
            measured = datamodule.size_after_transform(source)
            becomes = f": {measured[1]}x{measured[0]}" if measured != source else ""
            what = f"{split} file {name} ({source[1]}x{source[0]} as stored; data.preprocess={preprocess} {kept}{becomes})"
            check_image_size(networks, measured, what, fix(measured))


def check_image_size(
    networks: dict[str, nn.Module], size: tuple[int, int], what: str = "images", data_fix: str | None = None
) -> None:
    """Raise ``SizeError`` if a network that declares sizes cannot take ``size`` = (H, W) images.
    ``what`` names the images and where their size comes from, ``data_fix`` how to change it (for the message)."""
    rules = {name: rule for name, net in networks.items() if (rule := SizeRule.of(net)) is not None}
    height, width = size
    failing = {name: rule for name, rule in rules.items() if not (rule.accepts(height) and rule.accepts(width))}
    if not failing:
        return
    lines, network_fixes = [], {}
    for (group, kind, args, rule), names in _grouped(networks, failing).items():
        settings = "".join(f", {group}.{key}={value}" for key, value in args)
        lines.append(f"  - {', '.join(names)} ({kind}{settings}): {rule.describe()}")
        suggest = getattr(networks[names[0]], "args_for_size", None)
        fitting = suggest(height, width) if suggest is not None else None
        network_fixes[group + kind] = (
            " ".join(f"{group}.{key}={value}" for key, value in fitting.items()) if fitting else None
        )
    combined = SizeRule.combined(rules.values())
    data_fix = data_fix or f"use images whose sides are {_valid_examples(combined)}"
    message = [f"{what}: {height}x{width}, which these networks cannot take:", *lines, f"Fix: {data_fix}"]
    if all(network_fixes.values()):
        message.append(f"  or keep {height}x{width} with {' '.join(network_fixes.values())}")
    else:
        message.append(f"  (no setting of the failing networks' size arguments takes {height}x{width})")
    raise SizeError("\n".join(message))


def _grouped(networks: dict, failing: dict) -> dict[tuple, list[str]]:
    """Failing networks that share config group, class, size arguments and rule (CycleGAN's pairs) merged."""
    groups: dict[tuple, list[str]] = {}
    for name, rule in failing.items():
        net = networks[name]
        group = name.split("_")[0]  # generator_A -> the `generator` config group
        args = tuple(getattr(net, "size_args", {}).items())
        groups.setdefault((group, type(net).__name__, args, rule), []).append(name)
    return groups


def _origin(datamodule, size: tuple[int, int]) -> tuple[str, list[tuple[str, int]]]:
    """How the config sets the training size: (description, the keys that set it with their values)."""
    preprocess = getattr(datamodule, "preprocess", None)
    crop = getattr(datamodule, "crop_size", None)
    if preprocess is None:
        return f"from {type(datamodule).__name__}.train_image_size()", []
    if preprocess in CROPPING_MODES:
        return f"data.preprocess={preprocess}, data.crop_size={crop}", [("data.crop_size", crop)]
    source = getattr(datamodule, "source_image_size", lambda: None)()
    source_text = f"{source[0]}x{source[1]} source images" if source else "the source images"
    source_keys = [("data.size", getattr(datamodule, "size", None))]
    width = getattr(datamodule, "width", None)  # non-square embedded data: data.size is the height
    if width is not None and width != source_keys[0][1]:
        source_keys.append(("data.width", width))
    source_keys = [(key, value) for key, value in source_keys if value is not None]
    if source_keys:
        source_text += f" ({', '.join(f'{key}={value}' for key, value in source_keys)})"
    load = getattr(datamodule, "load_size", None)
    rounded = size[1] != load if preprocess == "scale_width" else tuple(size) != tuple(source or size)
    rounding = f", sides rounded down to multiples of {MAKE_DIVISIBLE}" if rounded else ""
    if preprocess == "scale_width":
        return (f"data.preprocess=scale_width to data.load_size={load} wide, {source_text}{rounding}",
                [("data.load_size", load)])
    return f"data.preprocess={preprocess}, {source_text}{rounding}", source_keys


def _data_fix(keys: list[tuple[str, int]], combined: SizeRule, datamodule) -> str:
    """The nearest valid values of the data keys that set the training size (of those that are not valid)."""
    if not keys:
        return f"train on images whose sides are {_valid_examples(combined)}"
    preprocess = getattr(datamodule, "preprocess", None)
    # none/scale_width round sides down to multiples of MAKE_DIVISIBLE: suggest values that survive it.
    rule = SizeRule.combined([combined, SizeRule(MAKE_DIVISIBLE)]) if preprocess in ("none", "scale_width") else combined
    wrong = [(key, value) for key, value in keys if not rule.accepts(value)] or keys
    return "; ".join(_nearest(key, value, rule, datamodule) for key, value in wrong)


def _nearest(key: str, value: int, rule: SizeRule, datamodule) -> str:
    below, above = rule.at_most(value), rule.at_least(value)
    if below is None:
        text = f"use {key}={above} (the nearest valid value; none is smaller)"
    else:
        text = f"use {key}={below} or {key}={above} (the nearest valid values)"
    preprocess, load = getattr(datamodule, "preprocess", None), getattr(datamodule, "load_size", None)
    if key == "data.crop_size" and preprocess in ("resize_and_crop", "scale_width_and_crop") and load is not None:
        if above > load:
            text += f"; {key}={above} needs data.load_size>={above} (now {load})"
    return text


def _valid_examples(rule: SizeRule) -> str:
    first = rule.smallest
    return f"multiples of {rule.divisor} from {first}" if rule.divisor > 1 else f"{first} and more"


def _check_preprocess(datamodule, combined: SizeRule) -> None:
    """Crop/load size combinations the preprocessing cannot produce at all."""
    preprocess = getattr(datamodule, "preprocess", None)
    crop, load = getattr(datamodule, "crop_size", None), getattr(datamodule, "load_size", None)
    if preprocess is None or crop is None:
        return
    if preprocess != "none" and crop < 1:
        raise SizeError(f"data.crop_size must be positive, got {crop}")
    if preprocess in ("resize_and_crop", "scale_width_and_crop") and load is not None and load < crop:
        below = combined.at_most(load)
        smaller = f" or data.crop_size={below}" if below is not None else ""
        what = "resizes to" if preprocess == "resize_and_crop" else "scales the width to"
        raise SizeError(
            f"data.load_size={load} is smaller than data.crop_size={crop}: data.preprocess={preprocess} {what} "
            f"data.load_size, then crops data.crop_size. Use data.load_size>={crop} (the papers load 286 for 256 "
            f"crops){smaller}"
        )
    source = getattr(datamodule, "source_image_size", lambda: None)()
    if source is None:
        return
    if preprocess == "scale_width_and_crop":
        source = (max(1, round(source[0] * load / source[1])), load)
    if preprocess in ("crop", "scale_width_and_crop") and min(source) < crop:
        below = combined.at_most(min(source))
        smaller = f"; use data.crop_size={below}" if below is not None else ""
        raise SizeError(
            f"data.crop_size={crop} is larger than the {source[0]}x{source[1]} images that "
            f"data.preprocess={preprocess} crops from{smaller}"
        )


def _first_item_sizes(datamodule) -> dict[str, tuple[tuple[int, int], str]]:
    """Sizes of the image tensors of the first training item: {"A": ((H, W), name), ...}."""
    datamodule.setup("fit")
    dataset = getattr(datamodule, "train_set", None)
    if dataset is None or len(dataset) == 0:
        return {}
    # Random crops, flips and unaligned B picks must not move the seeded streams that training then draws from.
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        item = dataset[0]
    random.setstate(python_state)
    if not isinstance(item, dict):
        return {}
    name = item.get("name", "item 0")
    return {
        key: ((int(value.shape[-2]), int(value.shape[-1])), name)
        for key, value in item.items()
        if hasattr(value, "shape") and len(value.shape) == 3
    }


# ----- prediction -----
def train_size_from_config(data: dict) -> int | None:
    """The side of the square training images of a run, from its data config; None when sizes varied
    (``preprocess`` none or scale_width on files)."""
    preprocess = data.get("preprocess")
    if preprocess in CROPPING_MODES:
        return data.get("crop_size")
    size = data.get("size")  # synthetic data: size x size sources
    if size is None:
        return None
    if preprocess == "scale_width":
        size = data.get("load_size", size)
    return max(MAKE_DIVISIBLE, size // MAKE_DIVISIBLE * MAKE_DIVISIBLE)
