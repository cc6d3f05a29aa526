"""The one image reader: each kind of file, written with PIL, read to the expected pixels; and training data,
the dataset tool, folder evaluation and predict all read a file to the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ExifTags, Image

from gan_translate.data import tools
from gan_translate.data.datasets import AlignedDataset, DataError, PairedFoldersDataset
from gan_translate.data.images import check_readable, image_size, read_image
from gan_translate.metrics import TranslationMetrics, evaluate_folders, load_image
from gan_translate.predict import read_image as predict_reads

RED, BLUE, GREEN, GRAY = (220, 30, 30), (30, 30, 220), (30, 200, 30), (128, 128, 128)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def quadrants(height: int, width: int) -> np.ndarray:
    """Four flat colours (JPEG keeps flat areas close to exact)."""
    array = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    array[:h, :w], array[:h, w:], array[h:, :w], array[h:, w:] = RED, GREEN, BLUE, GRAY
    return array


def write_exif_rotated_jpeg(path, displayed: np.ndarray) -> None:
    """Store ``displayed`` turned a quarter left, with EXIF orientation 6 ("turn 90 degrees clockwise to view")."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(displayed, k=1))).save(path, quality=95, subsampling=0, exif=exif)


def write_sixteen_bit_png(path) -> None:
    Image.fromarray(np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)).save(path)


def write_palette_png(path) -> None:
    image = Image.new("P", (4, 2))
    image.putpalette([10, 20, 30, *RED, *BLUE] + [0] * (256 - 3) * 3)
    image.putdata([0, 1, 2, 1, 0, 0, 2, 2])
    image.save(path, transparency=0)  # index 0 is fully transparent


def write_rgba_png(path) -> None:
    alpha = np.array([[0, 128, 255, 255]], dtype=np.uint8)
    color = np.broadcast_to(np.array([0, 0, 100], np.uint8), (1, 4, 3))
    Image.fromarray(np.dstack([color, alpha]), mode="RGBA").save(path)


def write_la_png(path) -> None:
    Image.fromarray(np.dstack([np.full((1, 3), 40, np.uint8), np.array([[0, 255, 128]], np.uint8)]), "LA").save(path)


def write_cmyk_jpeg(path) -> None:
    Image.fromarray(quadrants(16, 16)).convert("CMYK").save(path, quality=95, subsampling=0)


def test_exif_orientation_is_applied_also_to_the_header_size(tmp_path):
    displayed = quadrants(16, 24)  # 24 wide, 16 high as viewers show it
    write_exif_rotated_jpeg(tmp_path / "photo.jpg", displayed)
    assert Image.open(tmp_path / "photo.jpg").size == (16, 24)  # stored sideways
    image = read_image(tmp_path / "photo.jpg")
    assert image.size == (24, 16) == image_size(tmp_path / "photo.jpg")
    assert np.abs(pixels(image) - displayed).mean() < 3


def test_exif_rotated_pair_is_split_as_displayed(tmp_path):
    (tmp_path / "train").mkdir()
    pair = np.concatenate([np.full((16, 16, 3), RED, np.uint8), np.full((16, 16, 3), BLUE, np.uint8)], axis=1)
    write_exif_rotated_jpeg(tmp_path / "train/p.jpg", pair)  # stored 16 wide, 32 high: not an A|B on its own
    item = AlignedDataset(tmp_path, "train")[0]
    assert np.abs(item["A"].permute(1, 2, 0).numpy().astype(int) - RED).max() < 8
    assert np.abs(item["B"].permute(1, 2, 0).numpy().astype(int) - BLUE).max() < 8


def write_png_with_late_exif(path, array: np.ndarray, orientation: int = 6) -> None:
    """A PNG whose eXIf chunk follows the pixel data (PNG allows it; the header read cannot see it)."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    data = buffer.getvalue()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    raw = exif.tobytes().removeprefix(b"Exif\x00\x00")
    chunk = struct.pack(">I", len(raw)) + b"eXIf" + raw + struct.pack(">I", zlib.crc32(b"eXIf" + raw))
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])


def test_a_pair_that_a_late_exif_tag_turns_is_refused_when_read(tmp_path):
    """The header says 32x16 (an A|B pair); decoding applies the orientation and gives 16x32. It was split into two
    strips of both halves, silently."""
    (tmp_path / "train").mkdir()
    pair = np.concatenate([np.full((16, 16, 3), RED, np.uint8), np.full((16, 16, 3), BLUE, np.uint8)], axis=1)
    write_png_with_late_exif(tmp_path / "train/late.png", pair)
    dataset = AlignedDataset(tmp_path, "train")  # the header check passes
    with pytest.raises(DataError, match=r"late\.png decodes to 16x32 \(its EXIF orientation turns it\)"):
        dataset[0]


def test_float_images_in_the_unit_range_are_scaled(tmp_path):
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    assert pixels(read_image(tmp_path / "unit.tif")).tolist() == [[0, 64, 128, 255]]  # not all black
    levels = np.array([[0.0, 64.4, 300.0, -3.0]], np.float32)
    Image.fromarray(levels, mode="F").save(tmp_path / "levels.tif")
    assert pixels(read_image(tmp_path / "levels.tif")).tolist() == [[0, 64, 255, 0]]  # levels, clipped


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    write_sixteen_bit_png(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode == "I;16"
    gray = read_image(tmp_path / "depth.png")
    assert gray.mode == "L" and pixels(gray).tolist() == [[0, 4, 128, 255]]  # x / 257, rounded
    rgb = read_image(tmp_path / "depth.png", 3)
    assert pixels(rgb).tolist() == [[[v] * 3 for v in (0, 4, 128, 255)]]
    # 32-bit "I" images are taken as 16-bit too (older PIL opens 16-bit PNGs that way).
    assert pixels(read_image(tmp_path / "depth.png").convert("I")).tolist() == [[0, 4, 128, 255]]


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    write_palette_png(tmp_path / "palette.png")
    opened = Image.open(tmp_path / "palette.png")
    assert opened.mode == "P" and "transparency" in opened.info
    image = read_image(tmp_path / "palette.png", 3)
    assert [tuple(p) for p in pixels(image)[0]] == [(255, 255, 255), RED, BLUE, RED]


def test_rgba_and_la_are_composited_on_white(tmp_path):
    write_rgba_png(tmp_path / "rgba.png")
    rgba = pixels(read_image(tmp_path / "rgba.png", 3))[0]
    assert tuple(rgba[0]) == (255, 255, 255)  # transparent: white, not the stored colour
    np.testing.assert_allclose(rgba[1], [127, 127, 177], atol=1)  # half: halfway to white
    assert tuple(rgba[2]) == (0, 0, 100)
    write_la_png(tmp_path / "la.png")
    la = read_image(tmp_path / "la.png")
    assert la.mode == "L"
    np.testing.assert_allclose(pixels(la)[0], [255, 40, 148], atol=1)


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    write_cmyk_jpeg(tmp_path / "print.jpg")
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    image = read_image(tmp_path / "print.jpg", 3)
    assert image.mode == "RGB"
    assert np.abs(pixels(image) - quadrants(16, 16)).mean() < 3


def test_grayscale_and_rgb_convert_to_the_requested_channels(tmp_path):
    Image.fromarray(np.array([[0, 90, 255]], np.uint8)).save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png").mode == "L"  # channels=None keeps grayscale
    assert pixels(read_image(tmp_path / "gray.png", 3)).tolist() == [[[0] * 3, [90] * 3, [255] * 3]]
    Image.fromarray(np.array([[RED, BLUE]], np.uint8)).save(tmp_path / "color.png")
    assert read_image(tmp_path / "color.png").mode == "RGB"
    luma = [round((299 * r + 587 * g + 114 * b) / 1000) for r, g, b in (RED, BLUE)]  # ITU-R 601-2
    np.testing.assert_allclose(pixels(read_image(tmp_path / "color.png", 1))[0], luma, atol=1)
    with pytest.raises(DataError, match="input_nc/output_nc must be 1"):
        read_image(tmp_path / "color.png", 4)


def test_truncated_and_corrupt_files_are_errors_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    assert image_size(tmp_path / "cut.png") == (32, 32)  # the header is intact: decoding finds the cut
    with pytest.raises(DataError, match=r"cannot read image .*cut\.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(DataError, match=r"junk\.jpg"):
        read_image(tmp_path / "junk.jpg")
    with pytest.raises(DataError, match=r"junk\.jpg"):
        image_size(tmp_path / "junk.jpg")
    with pytest.raises(DataError, match=r"unreadable image file\(s\): .*junk\.jpg"):
        check_readable([tmp_path / "cut.png", tmp_path / "junk.jpg"])
    with pytest.raises(tools.DatasetToolError, match=r"cut\.png"):
        tools.load_rgb(tmp_path / "cut.png")


WRITERS = {
    "exif.jpg": lambda path: write_exif_rotated_jpeg(path, quadrants(16, 24)),
    "depth.png": write_sixteen_bit_png,
    "palette.png": write_palette_png,
    "rgba.png": write_rgba_png,
    "la.png": write_la_png,
    "print.jpg": write_cmyk_jpeg,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_dataset_tool_evaluation_and_predict_read_the_same_pixels(tmp_path, name):
    root = tmp_path / "paired"
    for folder in ("trainA", "trainB"):
        (root / folder).mkdir(parents=True)
        WRITERS[name](root / folder / name)
    path = root / "trainA" / name
    stem = path.stem

    # Training data (paired folders, no preprocessing): uint8 C x H x W.
    dataset = PairedFoldersDataset(root, "train")[0]["A"].permute(1, 2, 0).numpy().astype(int)
    # The dataset tool: A|B written losslessly by `make_dataset combine`.
    tools.combine_folders(root / "trainA", root / "trainB", tmp_path / "combined", log=None)
    combined = pixels(Image.open(tmp_path / "combined/train" / f"{stem}.png"))
    tool = combined[:, : combined.shape[1] // 2]
    # Folder evaluation: load_image's [-1, 1] tensor back to 0..255.
    evaluation = np.rint((load_image(path).permute(1, 2, 0).numpy() + 1) * 127.5).astype(int)
    # predict reads its inputs with the same function.
    predicted = pixels(predict_reads(path, 3))

    for other in (tool, evaluation, predicted):
        np.testing.assert_array_equal(other, dataset)

    # evaluate_folders end to end: the dataset's pixels as a prediction score a perfect L1 against the file.
    (tmp_path / "pred").mkdir()
    Image.fromarray(dataset.astype(np.uint8)).save(tmp_path / "pred" / f"{stem}.png")
    scores = evaluate_folders(tmp_path / "pred", root / "trainA", TranslationMetrics(psnr=False, ssim=False))
    assert scores["l1"] == 0


def test_paired_folders_resize_another_resolution_and_refuse_another_shape(tmp_path):
    for domain in "AB":
        (tmp_path / f"train{domain}").mkdir()
    Image.fromarray(np.full((16, 16, 3), RED, np.uint8)).save(tmp_path / "trainA/x.png")
    Image.fromarray(np.full((32, 32, 3), BLUE, np.uint8)).save(tmp_path / "trainB/x.png")
    assert PairedFoldersDataset(tmp_path, "train")[0]["B"].shape[-2:] == (16, 16)  # another resolution: resized
    Image.fromarray(np.full((16, 40, 3), BLUE, np.uint8)).save(tmp_path / "trainB/x.png")
    with pytest.raises(DataError, match=r"trainB/x\.png \(40x16\) is not the shape of its partner .*x\.png \(16x16\)"):
        PairedFoldersDataset(tmp_path, "train")[0]
