"""Procedural datasets: the embedded default that the demo and the tests train on (nothing to download).

``SyntheticFacades`` pairs a label map (wall, windows, door, balconies, cornice) with a rendered
facade-like photo, like a tiny CMP facades. ``SyntheticShapes`` is an unpaired pair of domains: plain
shapes (A) and the same kinds of shapes with stripes (B), a tiny horse2zebra.
Every image is a pure function of (seed, split, index), so runs are reproducible with no cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from gan_translate.data.datasets import check_direction

SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}

# Label colours (RGB) of the classes, one per semantic part.
LABELS = {
    "wall": (0, 0, 170),
    "window": (0, 85, 255),
    "door": (255, 170, 0),
    "balcony": (170, 255, 85),
    "cornice": (0, 255, 255),
    "sky": (0, 0, 0),
}
WALL_TONES = [(200, 170, 130), (170, 80, 60), (150, 150, 150), (225, 210, 180), (190, 120, 90)]


def _generator(seed: int, split: str, index: int) -> torch.Generator:
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    return torch.Generator().manual_seed(seed * 10_000_019 + SPLIT_OFFSETS[split] + index)


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _fill(image: torch.Tensor, top: int, left: int, bottom: int, right: int, colour) -> None:
    image[:, top:bottom, left:right] = torch.as_tensor(colour, dtype=image.dtype).view(-1, 1, 1)


def render_facade(size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One (label map, photo) pair as uint8 3 x size x size tensors."""
    label = torch.empty(3, size, size, dtype=torch.uint8)
    photo = torch.empty(3, size, size, dtype=torch.float32)
    _fill(label, 0, 0, size, size, LABELS["wall"])
    tone = torch.tensor(WALL_TONES[_randint(gen, 0, len(WALL_TONES) - 1)], dtype=torch.float32)
    tone = tone * (0.85 + 0.3 * torch.rand(1, generator=gen))  # per-building shade: the multimodal part
    shade = torch.linspace(1.05, 0.85, size).view(1, size, 1)  # sunlight from above
    photo[:] = tone.view(3, 1, 1) * shade + 6 * torch.randn(1, size, size, generator=gen)

    sky = _randint(gen, 0, size // 8)
    _fill(label, 0, 0, sky, size, LABELS["sky"])
    _fill(photo, 0, 0, sky, size, (150, 190, 235))
    cornice = max(2, size // 20)
    _fill(label, sky, 0, sky + cornice, size, LABELS["cornice"])
    _fill(photo, sky, 0, sky + cornice, size, (235, 230, 215))

    rows, cols = _randint(gen, 2, 4), _randint(gen, 2, 5)
    top, bottom = sky + cornice + size // 16, size - size // 4
    cell_h, cell_w = (bottom - top) // rows, size // cols
    win_h, win_w = max(4, int(cell_h * 0.6)), max(3, int(cell_w * 0.5))
    has_balcony = [bool(torch.rand(1, generator=gen) < 0.35) for _ in range(rows)]
    for row in range(rows):
        for col in range(cols):
            y = top + row * cell_h + (cell_h - win_h) // 2
            x = col * cell_w + (cell_w - win_w) // 2
            _fill(label, y, x, y + win_h, x + win_w, LABELS["window"])
            _fill(photo, y, x, y + win_h, x + win_w, (235, 235, 225))  # frame
            _fill(photo, y + 1, x + 1, y + win_h - 1, x + win_w - 1, (45, 60, 80))  # glass
            _fill(photo, y + win_h // 2, x + 1, y + win_h // 2 + 1, x + win_w - 1, (235, 235, 225))
            if has_balcony[row]:
                by = y + win_h - max(2, win_h // 3)
                _fill(label, by, x - 1, y + win_h + 1, x + win_w + 1, LABELS["balcony"])
                _fill(photo, by, x - 1, y + win_h + 1, x + win_w + 1, (30, 30, 30))
                photo[:, by + 1 : y + win_h + 1 : 2, max(0, x - 1) : x + win_w + 1] = 90.0  # railing bars

    door_w, door_h = max(4, size // 8), max(6, size // 5)
    door_x = _randint(gen, 0, size - door_w)
    _fill(label, size - door_h, door_x, size, door_x + door_w, LABELS["door"])
    _fill(photo, size - door_h, door_x, size, door_x + door_w, (200, 190, 170))
    _fill(photo, size - door_h + 1, door_x + 1, size, door_x + door_w - 1, (90, 50, 25))
    return label, photo.clamp(0, 255).round().to(torch.uint8)


def render_shapes(size: int, gen: torch.Generator, striped: bool) -> torch.Tensor:
    """Plain (domain A) or striped (domain B) shapes on a soft background, uint8 3 x size x size."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    background = 170 + 60 * torch.rand(3, 1, 1, generator=gen)
    image = background * (0.9 + 0.1 * ys.float() / size)
    for _ in range(_randint(gen, 1, 3)):
        radius = _randint(gen, size // 8, size // 4)
        cy, cx = _randint(gen, radius, size - radius), _randint(gen, radius, size - radius)
        if bool(torch.rand(1, generator=gen) < 0.5):
            mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
        else:
            mask = ((ys - cy).abs() <= radius) & ((xs - cx).abs() <= radius)
        colour = 40 + 180 * torch.rand(3, 1, 1, generator=gen)
        fill = colour.expand(3, size, size).clone()
        if striped:
            period = max(4, size // 10)
            dark = ((ys + xs) % period) < period // 2  # diagonal stripes, like a zebra's
            fill[:, dark] = 20.0
        image = torch.where(mask, fill, image)
    return image.clamp(0, 255).round().to(torch.uint8)


class SyntheticFacades(Dataset):
    """Paired label map -> facade photo; ``direction="BtoA"`` translates photos to labels instead."""

    def __init__(
        self,
        length: int = 400,
        size: int = 64,
        split: str = "train",
        seed: int = 0,
        direction: str = "AtoB",
        transform: Callable | None = None,
    ) -> None:
        self.length, self.size, self.split, self.seed = length, size, split, seed
        self.direction = check_direction(direction)
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        label, photo = render_facade(self.size, _generator(self.seed, self.split, index))
        source, target = (label, photo) if self.direction == "AtoB" else (photo, label)
        source, target = tv_tensors.Image(source), tv_tensors.Image(target)
        if self.transform is not None:
            source, target = self.transform(source, target)
        return {"A": source, "B": target, "name": f"{self.split}_{index:05d}"}


class SyntheticShapes(Dataset):
    """Unpaired plain shapes (A) and striped shapes (B); the two domains use independent draws."""

    def __init__(
        self,
        length: int = 400,
        size: int = 64,
        split: str = "train",
        seed: int = 0,
        transform_a: Callable | None = None,
        transform_b: Callable | None = None,
    ) -> None:
        self.length, self.size, self.split, self.seed = length, size, split, seed
        self.transform_a, self.transform_b = transform_a, transform_b

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        image_a = tv_tensors.Image(render_shapes(self.size, _generator(self.seed, self.split, index), False))
        # B uses a different seed stream, so item i of A and item i of B are unrelated.
        image_b = tv_tensors.Image(render_shapes(self.size, _generator(self.seed + 1, self.split, index), True))
        if self.transform_a is not None:
            image_a = self.transform_a(image_a)
        if self.transform_b is not None:
            image_b = self.transform_b(image_b)
        return {"A": image_a, "B": image_b, "name": f"{self.split}_{index:05d}"}
