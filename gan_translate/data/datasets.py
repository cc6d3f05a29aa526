"""Datasets. Every item is a dict ``{"A": tensor, "B": tensor, "name": str}`` with images in [-1, 1].

Paired datasets put the translation's *input* under "A" and its *target* under "B" (``direction``
swaps the halves on disk); unpaired datasets return one image of each domain.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

# The one image reader (gan_translate.data.images); re-exported here, where predict and the tools import it.
from gan_translate.data.images import (  # noqa: F401
    DataError,
    check_readable,
    convert,
    image_mode,
    image_size,
    read_image,
    same_shape,
)
from gan_translate.data.transforms import advice_of

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DIRECTIONS = ("AtoB", "BtoA")


def check_direction(direction: str) -> str:
    """``data.direction``, refused unless it is one of DIRECTIONS (a typo must not silently mean BtoA)."""
    if direction not in DIRECTIONS:
        raise DataError(f"data.direction must be one of {DIRECTIONS}, got {direction!r}")
    return direction


def list_images(folder: str | Path, what: str = "images") -> list[Path]:
    """Sorted image files directly inside ``folder`` (not recursive, hidden files skipped); a DataError
    naming ``what`` and the folder if it is missing, not a folder, or holds no images."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{what}: {folder} is not a folder")
    files = sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    if not files:
        raise DataError(f"{what}: folder {folder} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}; "
                        "not recursive)")
    return files


def index_by_stem(files: Iterable[Path], what: str = "images") -> dict[str, Path]:
    """File stem -> path, for matching files across folders by name; two files with one stem
    (``x.jpg`` and ``x.png``) are a DataError, since they could not be told apart."""
    by_stem: dict[str, Path] = {}
    clashes: list[str] = []
    for path in files:
        if path.stem in by_stem:
            clashes.append(f"{by_stem[path.stem].name} / {path.name} in {path.parent}")
        else:
            by_stem[path.stem] = path
    if clashes:
        raise DataError(f"{what}: several files share a name (stem): {', '.join(clashes)}")
    return by_stem


def transformed(transform: Callable | None, path: Path, *images):
    """Apply ``transform``, naming the file when it cannot (e.g. an image smaller than the crop)."""
    if transform is None:
        return images if len(images) > 1 else images[0]
    try:
        return transform(*images)
    except ValueError as error:
        raise DataError(
            f"{path} ({images[0].shape[-1]}x{images[0].shape[-2]}): {str(error).rstrip('.')}; {advice_of(transform)}"
        ) from error


class SkipBadImages(Dataset):
    """``data.on_bad_image=skip``: an item whose file cannot be read is replaced by the next readable one.

    Each skip warns with the file and the number skipped so far (counted per process: each DataLoader
    worker counts its own). Construction-time checks (missing folders, A|B sizes) still raise.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self)):
            try:
                return self.dataset[(index + offset) % len(self)]
            except DataError as error:
                self.skipped += 1
                warnings.warn(f"skipped a bad image ({self.skipped} so far): {error}", stacklevel=2)
        raise DataError(f"data.on_bad_image=skip: none of the {len(self)} items could be read")


class AlignedDataset(Dataset):
    """pix2pix layout: ``root/split/*.jpg``, each image A and B side by side (A left).

    Image headers are checked up front so a wrong file fails before training, not hours into it.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        direction: str = "AtoB",
        input_nc: int = 3,
        output_nc: int = 3,
        transform: Callable | None = None,
        square_halves: bool = True,
        skip_unreadable: bool = False,
    ) -> None:
        check_direction(direction)
        self.files = list_images(Path(root) / split, what=f"aligned A|B {split} split")
        self.direction = direction
        self.input_nc, self.output_nc = input_nc, output_nc
        self.transform = transform
        self.square_halves = square_halves
        unreadable: list[str] = []
        self._half_sizes: dict[tuple[int, int], str] = {}  # (H, W) of an A or B half -> the first file of that size
        for path in list(self.files):
            try:
                width, height = image_size(path)
            except DataError as error:
                if not skip_unreadable:
                    raise
                unreadable.append(f"{path.name} ({error.__cause__ or error})")
                self.files.remove(path)
                continue
            if width % 2 or (square_halves and width != 2 * height):
                raise DataError(
                    f"{path} is {width}x{height}; an A|B image must hold two halves side by side"
                    + (" (width = 2 x height)" if square_halves else " (even width)")
                    + ("" if not square_halves else ". Set data.square_halves=false for non-square halves.")
                )
            self._half_sizes.setdefault((height, width // 2), path.name)
        if unreadable:  # data.on_bad_image=skip: left out here, as the other layouts skip them when read
            warnings.warn(f"data.on_bad_image=skip: {len(unreadable)} unreadable file(s) left out of "
                          f"{Path(root) / split}: {'; '.join(unreadable[:10])}", stacklevel=2)
            if not self.files:
                raise DataError(f"data.on_bad_image=skip: none of the images in {Path(root) / split} can be read")

    def __len__(self) -> int:
        return len(self.files)

    def source_sizes(self) -> dict[tuple[int, int], str]:
        """{(H, W) of the A and B halves as stored: the first file of that size} (from the headers)."""
        return dict(self._half_sizes)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        image = read_image(path)
        if image.width % 2 or (self.square_halves and image.width != 2 * image.height):
            # The header said otherwise: a PNG whose EXIF orientation follows the pixels turns only when decoded.
            raise DataError(f"{path} decodes to {image.width}x{image.height} (its EXIF orientation turns it), which is "
                            "no A|B pair; save it without the orientation tag (or turned as it should be)")
        half = image.width // 2
        left, right = image.crop((0, 0, half, image.height)), image.crop((half, 0, image.width, image.height))
        source, target = (left, right) if self.direction == "AtoB" else (right, left)
        source = TF.to_image(convert(source, self.input_nc))
        target = TF.to_image(convert(target, self.output_nc))
        source, target = transformed(self.transform, path, source, target)
        return {"A": source, "B": target, "name": path.stem}


class PairedFoldersDataset(Dataset):
    """Pairs from two folders, ``root/{split}A`` and ``root/{split}B``, matched by file stem."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        direction: str = "AtoB",
        input_nc: int = 3,
        output_nc: int = 3,
        transform: Callable | None = None,
    ) -> None:
        check_direction(direction)
        what_a, what_b = f"domain A {split} split", f"domain B {split} split"
        files_a = index_by_stem(list_images(Path(root) / f"{split}A", what=what_a), what_a)
        files_b = index_by_stem(list_images(Path(root) / f"{split}B", what=what_b), what_b)
        unmatched = sorted(set(files_a) ^ set(files_b))
        if unmatched:
            raise DataError(
                f"paired folders under {root}: {len(unmatched)} file names appear in only one of "
                f"{split}A/ and {split}B/, e.g. {unmatched[:5]}"
            )
        self.pairs = [(files_a[stem], files_b[stem]) for stem in sorted(files_a)]
        if direction == "BtoA":
            self.pairs = [(b, a) for a, b in self.pairs]
        self.input_nc, self.output_nc = input_nc, output_nc
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        source_path, target_path = self.pairs[index]
        source = TF.to_image(read_image(source_path, self.input_nc))
        target = TF.to_image(read_image(target_path, self.output_nc))
        if source.shape[-2:] != target.shape[-2:]:
            (sh, sw), (th, tw) = source.shape[-2:], target.shape[-2:]
            if not same_shape((sw, sh), (tw, th)):  # another shape, not another resolution: not one scene
                raise DataError(f"{target_path} ({tw}x{th}) is not the shape of its partner {source_path} ({sw}x{sh}); "
                                "paired images must show the same view (another resolution is resized)")
            target = TF.resize(target, list(source.shape[-2:]), antialias=True)
        source, target = transformed(self.transform, source_path, source, target)
        return {"A": source, "B": target, "name": source_path.stem}


class UnalignedDataset(Dataset):
    """CycleGAN layout: ``root/{split}A`` and ``root/{split}B``, unpaired.

    Length is max(|A|, |B|); A is read in order, B at random (``serial=False``) so that every epoch
    sees new pairings, or in order (``serial=True``) for reproducible evaluation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        input_nc: int = 3,
        output_nc: int = 3,
        transform_a: Callable | None = None,
        transform_b: Callable | None = None,
        serial: bool = False,
        check_files: bool = True,
    ) -> None:
        self.files_a = list_images(Path(root) / f"{split}A", what=f"CycleGAN domain A ({split}A)")
        self.files_b = list_images(Path(root) / f"{split}B", what=f"CycleGAN domain B ({split}B)")
        # Headers up front, as for the aligned layout: a bad file fails before training. The sizes serve
        # source_sizes; with check_files=False (on_bad_image=skip) it reads the headers itself.
        self._sizes = check_readable(self.files_a + self.files_b) if check_files else None
        self.input_nc, self.output_nc = input_nc, output_nc
        self.transform_a, self.transform_b = transform_a, transform_b
        self.serial = serial

    def __len__(self) -> int:
        return max(len(self.files_a), len(self.files_b))

    def source_sizes(self) -> dict[tuple[int, int], str]:
        """{(H, W) as stored: the first file of that size}, both domains, from the headers (unreadable ones left
        to the reads)."""
        sizes: dict[tuple[int, int], str] = {}
        for path in self.files_a + self.files_b:
            try:
                width, height = self._sizes[path] if self._sizes is not None else image_size(path)
            except DataError:
                continue
            sizes.setdefault((height, width), f"{path.parent.name}/{path.name}")
        return sizes

    def __getitem__(self, index: int) -> dict:
        path_a = self.files_a[index % len(self.files_a)]
        if self.serial:
            path_b = self.files_b[index % len(self.files_b)]
        else:
            path_b = self.files_b[random.randrange(len(self.files_b))]
        image_a = TF.to_image(read_image(path_a, self.input_nc))
        image_b = TF.to_image(read_image(path_b, self.output_nc))
        image_a = transformed(self.transform_a, path_a, image_a)
        image_b = transformed(self.transform_b, path_b, image_b)
        return {"A": image_a, "B": image_b, "name": path_a.stem, "name_B": path_b.stem}
