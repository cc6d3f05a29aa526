"""Dataset preparation tools for image-to-image translation.

Aligned (pix2pix) datasets store every example as one image with the input ``A`` on the left and the
target ``B`` on the right (width = 2 x height)::

    ROOT/train/NAME.png   ROOT/val/NAME.png   ROOT/test/NAME.png

The functions here build such datasets:

* :func:`combine_folders` - pair two folders of matching file names (``A/x.jpg`` + ``B/x.png``).
* :func:`make_edges_dataset` - edges -> photo pairs from any folder of photos (Canny edge detector from
  scikit-image, black edges on white, as in the edges2shoes / edges2handbags datasets).
* :func:`make_colorization_dataset` - grayscale -> colour pairs from any folder of photos.

Conventions shared by all tools:

* Images are read with :func:`gan_translate.data.images.read_image`, as training and evaluation read them:
  EXIF orientation applied, 8-bit RGB (grayscale / palette / CMYK converted, 16-bit scaled, transparent
  pixels composited onto white).
* Errors are raised as :class:`DatasetToolError` *before* anything is written whenever possible
  (missing or empty input folders, unreadable images, unmatched names, name collisions) and always name
  the offending folder or file. A file that only fails while decoding (a truncated JPEG passes the header
  check) fails the whole build, naming every such file, and leaves the output folders as they were: the
  pairs are written to a staging folder and moved into place only when all of them succeeded, so a rerun
  after fixing the files needs no cleanup.
* An output folder that is one of the input folders is refused (``--overwrite`` would replace the inputs).
* Output names keep the input file stem; the extension is given by ``fmt`` (``png`` - lossless, the
  default - or ``jpg``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from gan_translate.data import images
from gan_translate.data.datasets import DataError, index_by_stem, list_images

SPLITS = ("train", "val", "test")
FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "jpeg": ("JPEG", ".jpg")}
RESAMPLE = Image.Resampling.BICUBIC


class DatasetToolError(DataError):
    """A user-facing error of the dataset tools (bad input folder, unreadable file, ...)."""


@dataclass
class BuildReport:
    """What a dataset tool wrote."""

    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)  # split -> number of images written
    skipped: list[str] = field(default_factory=list)  # names skipped (e.g. unmatched in combine)
    resized_b: int = 0  # combine: pairs whose B was resized to A's size

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------------------------------------
# Listing and reading images
# --------------------------------------------------------------------------------------------------------


def check_readable(paths: Iterable[Path]) -> None:
    """Open every image header (cheap) and raise one error naming all files PIL cannot identify."""
    try:
        images.check_readable(paths)
    except DataError as exc:
        raise DatasetToolError(str(exc)) from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB (the one conversion of :mod:`gan_translate.data.images`)."""
    return images.convert(img, 3)


def load_rgb(path: str | Path) -> Image.Image:
    """Read an image file as 8-bit RGB with the one image reader (EXIF orientation applied, 16-bit scaled,
    transparency on white). Errors name the file."""
    try:
        return images.read_image(path, 3)
    except DataError as exc:
        raise DatasetToolError(str(exc)) from exc


def save_image(img: Image.Image, path: Path, fmt: str = "png", quality: int = 95) -> Path:
    pil_format, _ = resolve_format(fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if pil_format == "JPEG":
            img.save(path, format="JPEG", quality=quality, subsampling=0)
        else:
            img.save(path, format=pil_format)
    except OSError as exc:
        raise DatasetToolError(f"cannot write {path}: {exc}") from exc
    return path


def resolve_format(fmt: str) -> tuple[str, str]:
    """``"png"``/``"jpg"``/``"jpeg"`` -> (PIL format name, file extension)."""
    key = fmt.lower().lstrip(".")
    if key not in FORMATS:
        raise DatasetToolError(f"unknown output format {fmt!r}; choose one of png, jpg")
    return FORMATS[key]


# --------------------------------------------------------------------------------------------------------
# Sizes, pairs and splits
# --------------------------------------------------------------------------------------------------------


def parse_size(text: str | None) -> tuple[int, int] | None:
    """Parse ``"keep"``/``None`` -> None, ``"256"`` -> (256, 256), ``"256x512"`` -> (256, 512) as (H, W)."""
    if text is None:
        return None
    text = str(text).strip().lower()
    if text in ("", "keep", "none"):
        return None
    parts = text.split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise DatasetToolError(f"invalid size {text!r}: expected 'keep', N or HxW with positive integers")
    return values[0], values[1]


def resize_hw(img: Image.Image, size_hw: tuple[int, int] | None) -> Image.Image:
    """Resize to (H, W) with bicubic resampling; ``None`` or an equal size returns the image unchanged."""
    if size_hw is None:
        return img
    h, w = size_hw
    if img.size == (w, h):
        return img
    return img.resize((w, h), RESAMPLE)


def square_image(img: Image.Image, size: int, center_crop: bool = False) -> Image.Image:
    """Resize to ``size x size``; with ``center_crop`` the central square is cut first (keeps aspect)."""
    if center_crop:
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    return resize_hw(img, (size, size))


def side_by_side(a: Image.Image, b: Image.Image) -> Image.Image:
    """Concatenate A (left) and B (right); both must be RGB of the same size."""
    if a.size != b.size:
        raise DatasetToolError(f"A and B must have the same size, got {a.size} and {b.size}")
    w, h = a.size
    out = Image.new("RGB", (2 * w, h))
    out.paste(a, (0, 0))
    out.paste(b, (w, 0))
    return out


def split_counts(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Number of items per split: val/test get ``round(n * fraction)`` (halves round up), train the rest."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not (0.0 <= frac < 1.0) or math.isnan(frac):
            raise DatasetToolError(f"{name} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetToolError(
            f"val_fraction + test_fraction must be < 1 (train needs images), got {val_fraction + test_fraction}"
        )
    n_test = int(math.floor(n * test_fraction + 0.5))
    n_val = min(int(math.floor(n * val_fraction + 0.5)), n - n_test)
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def split_names(
    names: Sequence[str], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[str]]:
    """Deterministically split names into train/val/test.

    Names are ordered by ``sha256(f"{seed}:{name}")`` (independent of input order, Python version and
    platform); the first ``n_test`` go to test, the next ``n_val`` to val, the rest to train. Each list is
    returned sorted.
    """
    if len(set(names)) != len(names):
        raise DatasetToolError("split_names got duplicate names")
    counts = split_counts(len(names), val_fraction, test_fraction)
    order = sorted(names, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    n_test, n_val = counts["test"], counts["val"]
    return {
        "train": sorted(order[n_test + n_val :]),
        "val": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def _check_output_dirs(out_dir: Path, splits: Iterable[str], overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetToolError(f"output path exists and is not a directory: {out_dir}")
    splits, inputs = list(splits), list(inputs)
    for split in splits:
        folder = out_dir / split
        if folder.exists() and not folder.is_dir():
            raise DatasetToolError(f"output path exists and is not a directory: {folder}")
        for source in inputs:
            if folder.resolve() == source.resolve():
                raise DatasetToolError(
                    f"the output folder {folder} is the input folder {source}: writing the pairs there "
                    "would replace or mix with the input images; choose another output folder"
                )
    if overwrite:
        return
    for split in splits:
        d = out_dir / split
        if d.is_dir() and any(d.iterdir()):
            raise DatasetToolError(
                f"output folder is not empty: {d} (use overwrite / --overwrite to write into it anyway)"
            )


class _StagedOutput:
    """Pairs written to a hidden staging folder inside ``out_dir``; :meth:`commit` moves them into the split
    folders. Decoding failures are collected (:meth:`failed`) so one error names every bad file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: list[tuple[Path, Path]] = []  # (staged file, final path)
        self.errors: list[str] = []

    def save(self, img: Image.Image, final: Path, fmt: str, quality: int) -> None:
        staged = self.root / final.parent.name / final.name
        self.written.append((save_image(img, staged, fmt, quality), final))

    def failed(self, error: DatasetToolError) -> None:
        self.errors.append(str(error))

    def commit(self) -> None:
        if self.errors:
            self.errors.sort()
            shown = "; ".join(self.errors[:10]) + (f"; ... ({len(self.errors)} in total)" if len(self.errors) > 10 else "")
            raise DatasetToolError(
                f"{len(self.errors)} image(s) could not be decoded, so nothing was written: {shown}. Fix or "
                "remove them and run again"
            )
        for folder in dict.fromkeys(final.parent for _, final in self.written):  # all of them before any move
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatasetToolError(f"cannot create the output folder {folder}: {exc}") from exc
        for staged, final in self.written:
            os.replace(staged, final)  # same file system (the staging folder is inside out_dir): a rename


@contextlib.contextmanager
def _staged_output(out_dir: Path) -> Iterator[_StagedOutput]:
    """A staging folder inside ``out_dir``, removed on exit; ``out_dir`` itself is removed again when this
    created it and nothing was moved in (the build failed)."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield _StagedOutput(staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()


# --------------------------------------------------------------------------------------------------------
# combine: two folders -> aligned A|B
# --------------------------------------------------------------------------------------------------------


def combine_folders(
    dir_a: str | Path,
    dir_b: str | Path,
    out_dir: str | Path,
    split: str = "train",
    size: tuple[int, int] | None = None,
    fmt: str = "png",
    quality: int = 95,
    skip_unmatched: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> BuildReport:
    """Pair ``dir_a/NAME.*`` with ``dir_b/NAME.*`` (by file stem) into ``out_dir/split/NAME.<fmt>`` as A|B.

    * Names present in only one folder raise :class:`DatasetToolError` listing them, unless
      ``skip_unmatched`` (they are then skipped and reported in ``BuildReport.skipped``).
    * ``size=(H, W)`` resizes both A and B to H x W (output H x 2W). With ``size=None`` ("keep") A keeps
      its size and B is resized (bicubic) to A's size when they differ.
    """
    dir_a, dir_b, out_dir = Path(dir_a), Path(dir_b), Path(out_dir)
    if not split or "/" in split or "\\" in split or split in (".", ".."):
        raise DatasetToolError(f"invalid split name {split!r}")
    pil_format, ext = resolve_format(fmt)
    a_files = index_by_stem(list_images(dir_a, "folder A"), "folder A")
    b_files = index_by_stem(list_images(dir_b, "folder B"), "folder B")

    only_a = sorted(set(a_files) - set(b_files))
    only_b = sorted(set(b_files) - set(a_files))
    common = sorted(set(a_files) & set(b_files))
    unmatched = [f"{a_files[s].name} (only in {dir_a})" for s in only_a] + [
        f"{b_files[s].name} (only in {dir_b})" for s in only_b
    ]
    if unmatched and not skip_unmatched:
        shown = ", ".join(unmatched[:20]) + (
            f", ... ({len(unmatched)} in total)" if len(unmatched) > 20 else ""
        )
        raise DatasetToolError(
            f"{len(unmatched)} file name(s) have no partner (pairing is by file name without extension): "
            f"{shown}. Use --skip-unmatched to ignore them."
        )
    if not common:
        raise DatasetToolError(f"no file names in common between {dir_a} and {dir_b}")
    check_readable([a_files[s] for s in common] + [b_files[s] for s in common])
    _check_output_dirs(out_dir, [split], overwrite, inputs=(dir_a, dir_b))

    report = BuildReport(out_dir=out_dir, skipped=only_a + only_b)
    with _staged_output(out_dir) as output:
        for stem in common:
            try:
                a = resize_hw(load_rgb(a_files[stem]), size)
                b = resize_hw(load_rgb(b_files[stem]), size)
            except DatasetToolError as error:
                output.failed(error)
                continue
            if b.size != a.size:
                b = b.resize(a.size, RESAMPLE)
                report.resized_b += 1
            output.save(side_by_side(a, b), out_dir / split / f"{stem}{ext}", pil_format, quality)
        output.commit()
    report.counts[split] = len(common)
    if log is not None:
        msg = f"combine: wrote {len(common)} pairs to {out_dir / split}"
        if unmatched:
            msg += f"; skipped {len(unmatched)} unmatched file(s)"
        if report.resized_b:
            msg += f"; resized B to A's size for {report.resized_b} pair(s)"
        log(msg)
    return report


# --------------------------------------------------------------------------------------------------------
# edges and colorization: one folder of photos -> A|B with train/val/test splits
# --------------------------------------------------------------------------------------------------------


def canny_edges(
    img: Image.Image,
    sigma: float = 2.0,
    low_threshold: float | None = None,
    high_threshold: float | None = None,
    thickness: int = 1,
) -> Image.Image:
    """Canny edges of the grayscale image, drawn black (0) on white (255), returned as RGB.

    Uses :func:`skimage.feature.canny` on the luminance in [0, 1]; thresholds are in that scale
    (scikit-image defaults: 0.1 / 0.2 of the gradient magnitude). ``thickness > 1`` dilates the edges
    with a (thickness x thickness) square.
    """
    try:
        from skimage.feature import canny
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DatasetToolError(
            "the edges tool needs scikit-image: pip install 'gan_translate[tools]' (or scikit-image)"
        ) from exc
    if sigma < 0:
        raise DatasetToolError(f"sigma must be >= 0, got {sigma}")
    if thickness < 1:
        raise DatasetToolError(f"thickness must be >= 1, got {thickness}")
    gray = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    edges = canny(gray, sigma=sigma, low_threshold=low_threshold, high_threshold=high_threshold)
    if thickness > 1:
        from scipy.ndimage import binary_dilation

        edges = binary_dilation(edges, structure=np.ones((thickness, thickness), dtype=bool))
    out = np.where(edges, 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L").convert("RGB")


def grayscale_rgb(img: Image.Image) -> Image.Image:
    """Luminance (ITU-R 601-2, PIL ``"L"``) replicated to 3 channels, so R == G == B."""
    return img.convert("L").convert("RGB")


def make_paired_from_photos(
    src_dir: str | Path,
    out_dir: str | Path,
    make_a: Callable[[Image.Image], Image.Image],
    size: int | None = 256,
    center_crop: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    fmt: str = "png",
    quality: int = 95,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
    tool_name: str = "paired",
) -> BuildReport:
    """Generic builder: for each photo B (resized to ``size`` x ``size``; ``None`` keeps the size) write
    ``make_a(B) | B`` into ``out_dir/{train,val,test}/STEM.<fmt>``."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    pil_format, ext = resolve_format(fmt)
    if size is not None and size <= 0:
        raise DatasetToolError(f"size must be a positive integer, got {size}")
    files = index_by_stem(list_images(src_dir, "photo folder"), "photo folder")
    splits = split_names(list(files), val_fraction, test_fraction, seed)
    check_readable(files.values())
    _check_output_dirs(out_dir, [s for s in SPLITS if splits[s]], overwrite, inputs=(src_dir,))

    report = BuildReport(out_dir=out_dir)
    with _staged_output(out_dir) as output:
        for split in SPLITS:
            for stem in splits[split]:
                try:
                    photo = load_rgb(files[stem])
                except DatasetToolError as error:
                    output.failed(error)
                    continue
                if size is not None:
                    photo = square_image(photo, size, center_crop)
                output.save(side_by_side(make_a(photo), photo), out_dir / split / f"{stem}{ext}", pil_format, quality)
            report.counts[split] = len(splits[split])
        output.commit()
    if log is not None:
        parts = ", ".join(f"{s}={report.counts[s]}" for s in SPLITS)
        log(f"{tool_name}: wrote {report.total} pairs to {out_dir} ({parts})")
    return report


def make_edges_dataset(
    src_dir: str | Path,
    out_dir: str | Path,
    size: int | None = 256,
    sigma: float = 2.0,
    low_threshold: float | None = None,
    high_threshold: float | None = None,
    thickness: int = 1,
    center_crop: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    fmt: str = "png",
    quality: int = 95,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> BuildReport:
    """edges -> photo dataset: A = Canny edges (black on white) of the resized photo, B = the photo.

    The pix2pix paper builds edges2shoes/edges2handbags with HED plus post-processing; this uses the
    classical Canny detector instead (see :func:`canny_edges`).
    """
    # validate detector options before touching any file
    if sigma < 0:
        raise DatasetToolError(f"sigma must be >= 0, got {sigma}")
    if thickness < 1:
        raise DatasetToolError(f"thickness must be >= 1, got {thickness}")

    def make_a(photo: Image.Image) -> Image.Image:
        return canny_edges(photo, sigma, low_threshold, high_threshold, thickness)

    return make_paired_from_photos(
        src_dir, out_dir, make_a, size=size, center_crop=center_crop, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, fmt=fmt, quality=quality, overwrite=overwrite, log=log,
        tool_name="edges",
    )  # fmt: skip


def make_colorization_dataset(
    src_dir: str | Path,
    out_dir: str | Path,
    size: int | None = 256,
    center_crop: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    fmt: str = "png",
    quality: int = 95,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> BuildReport:
    """grayscale -> colour dataset: A = grayscale photo stored as 3-channel RGB (R == G == B), B = photo.

    A is stored with three identical channels so the standard RGB aligned loader works unchanged. Models
    with ``input_nc=1`` can take any one channel of A (or convert A with ``.convert("L")``) - no
    information is lost because the channels are equal.
    """
    return make_paired_from_photos(
        src_dir, out_dir, grayscale_rgb, size=size, center_crop=center_crop, val_fraction=val_fraction,
        test_fraction=test_fraction, seed=seed, fmt=fmt, quality=quality, overwrite=overwrite, log=log,
        tool_name="colorization",
    )  # fmt: skip
