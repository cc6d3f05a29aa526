"""The one image reader: training data, the dataset tools, folder evaluation and predict all read files here,
so that a photo is the same pixels wherever it is read.

What a file becomes (one choice everywhere):
- EXIF orientation is applied (the picture as viewers show it); the header-only size check agrees.
- 16-bit grayscale (PIL modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` and ``I``, taken as 0..65535) is
  scaled to 8 bits (x / 257, rounded: 65535 -> 255), not clipped at 255 as PIL's ``convert("L")`` does.
- 32-bit float images (mode ``F``, e.g. TIFF) whose values lie within [0, 1] are scaled to 0..255; others are
  taken as 0..255 levels (clipped).
- Transparency (RGBA, LA, PA, palette or grayscale/RGB images with a transparent colour) is composited
  onto white, as an image viewer or a browser shows it; the colour stored under transparent pixels is
  often arbitrary, so it is not used.
- Everything else (CMYK, palette, bilevel, YCbCr) goes through PIL's own conversion. Embedded colour
  profiles are not applied.
- The result is 8-bit ``L`` (1 channel) or ``RGB`` (3 channels): grayscale is replicated to RGB, RGB is
  reduced to PIL's ITU-R 601-2 luma. With ``channels=None`` grayscale files stay ``L``, others become ``RGB``.
- A file that cannot be opened or decoded (corrupt, truncated, unsupported) is a :class:`DataError`
  naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import ExifTags, Image, ImageOps

from gan_translate.errors import UsageError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
GRAYSCALE_MODES = ("1", "L", "LA", "La", "F", *SIXTEEN_BIT_MODES)
# Orientations 5-8 turn the picture by 90 degrees: its width and height swap.
_QUARTER_TURNS = (5, 6, 7, 8)
# What PIL raises on files it cannot identify or decode (UnidentifiedImageError is an OSError).
_READ_ERRORS = (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError)


class DataError(UsageError, ValueError):
    """Bad data on disk: names the file or folder and what was expected."""


def image_mode(channels: int) -> str:
    """The PIL mode of a ``channels``-channel image: 1 -> ``L``, 3 -> ``RGB``."""
    if channels not in (1, 3):
        raise DataError(f"input_nc/output_nc must be 1 (grayscale) or 3 (RGB), got {channels}")
    return "L" if channels == 1 else "RGB"


def convert(image: Image.Image, channels: int | None = None) -> Image.Image:
    """An in-memory PIL image as 8-bit ``L`` or ``RGB`` with ``channels`` channels (see the module docstring).

    Does not apply EXIF orientation (``read_image`` does, once, when the file is read)."""
    mode = image_mode(channels) if channels is not None else ("L" if image.mode in GRAYSCALE_MODES else "RGB")
    if image.mode in SIXTEEN_BIT_MODES:
        # point() on mode I is a linear map (v * scale + offset) in PIL's C code; + 0.5 rounds.
        image = image.convert("I").point(lambda value: value / 257 + 0.5).convert("L")
    elif image.mode == "F":
        # Float images (32-bit TIFF) have no fixed range: values within [0, 1], what most pipelines write, are
        # scaled to 0..255 (they read as black otherwise); others are taken as 0..255 levels. Clipped, rounded.
        scale = 255.0 if image.getextrema()[1] <= 1.0 else 1.0
        image = image.point(lambda value: value * scale + 0.5).convert("L")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert(mode)


def read_image(path: str | Path, channels: int | None = None) -> Image.Image:
    """Read and fully decode an image file, EXIF orientation applied, as 8-bit ``L``/``RGB``
    (``channels`` 1 or 3; ``None``: grayscale files stay ``L``). Errors are a DataError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, naming the file
            image = ImageOps.exif_transpose(image)
        return convert(image, channels)
    except DataError:
        raise
    except _READ_ERRORS as error:
        raise DataError(f"cannot read image {path}: {error}") from error


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the picture as ``read_image`` returns it, from the file header only (no decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            # A PNG's EXIF may follow the pixels, and PIL would decode the image to find it: only a
            # header eXIf chunk counts here (cameras write JPEG/TIFF/WebP, where EXIF is in the header).
            if image.format != "PNG" or "exif" in image.info:
                if image.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS:
                    width, height = height, width
    except _READ_ERRORS as error:
        raise DataError(f"cannot read image {path}: {error}") from error
    return width, height


def check_readable(paths: Iterable[str | Path]) -> dict[Path, tuple[int, int]]:
    """Open every file's header (cheap) and raise one DataError naming all files that cannot be read; returns
    each file's (width, height), as :func:`image_size` gives it, for callers that need the sizes too."""
    bad: list[str] = []
    sizes: dict[Path, tuple[int, int]] = {}
    for path in paths:
        try:
            sizes[Path(path)] = image_size(path)
        except DataError as error:
            cause = error.__cause__
            bad.append(f"{path} ({type(cause).__name__}: {cause})")
    if bad:
        raise DataError("unreadable image file(s): " + "; ".join(bad))
    return sizes


def same_shape(size: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether two (width, height) sizes have one aspect ratio, up to the rounding of a resize (one pixel)."""
    (width, height), (other_width, other_height) = size, other
    return abs(width * other_height - height * other_width) <= max(height, other_height)
