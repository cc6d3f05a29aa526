"""Command-line dataset tools (plain argparse, not Hydra).

Usage::

    python -m gan_translate.data.make_dataset combine --a DIR_A --b DIR_B --out OUT [--split train]
        [--resize-to keep|N|HxW] [--format png|jpg] [--skip-unmatched] [--overwrite]
    python -m gan_translate.data.make_dataset edges --src PHOTOS --out OUT [--size 256] [--sigma 2.0]
        [--val-fraction 0.1] [--test-fraction 0.1] [--seed 0] [--format png|jpg]
    python -m gan_translate.data.make_dataset colorization --src PHOTOS --out OUT [--size 256]
        [--val-fraction 0.1] [--test-fraction 0.1] [--seed 0] [--format png|jpg]
    python -m gan_translate.data.make_dataset download NAME --root DIR [--kind pix2pix|cyclegan]
        [--url URL | --archive PATH] [--sha256 HEX]
    python -m gan_translate.data.make_dataset download --list

Exit status: 0 on success, 2 on a usage or data error (the message names the folder / file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gan_translate.data import tools
from gan_translate.data.datasets import DataError
from gan_translate.data.download import DownloadError, available_datasets, download_dataset


def _size_arg(text: str) -> int | None:
    if text.strip().lower() in ("keep", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'keep', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {value}")
    return value


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output dataset root")
    p.add_argument("--format", default="png", choices=["png", "jpg"], help="output format (default: png)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default: 95)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into non-empty output split folders (replaces same names)",
    )


def _add_photo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, help="folder of photos (not recursive)")
    _add_output_args(p)
    p.add_argument(
        "--size",
        type=_size_arg,
        default=256,
        help="resize each photo to SIZE x SIZE first, or 'keep' (default: 256)",
    )
    p.add_argument(
        "--center-crop", action="store_true", help="cut the central square before resizing (keep aspect)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="fraction of images for val/ (default: 0.1)"
    )
    p.add_argument(
        "--test-fraction", type=float, default=0.1, help="fraction of images for test/ (default: 0.1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the deterministic split (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan_translate.data.make_dataset",
        description="Build aligned A|B (pix2pix) datasets and download the standard pix2pix/CycleGAN datasets.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "combine",
        help="pair two folders of matching file names into A|B images",
        description="Pair DIR_A/NAME.* with DIR_B/NAME.* (by file name without extension) and write "
        "OUT/SPLIT/NAME.<format> with A on the left and B on the right. With --resize-to keep, B is resized "
        "to A's size when they differ; with --resize-to HxW both halves are resized to HxW.",
    )
    p.add_argument("--a", required=True, help="folder with the A (input) images")
    p.add_argument("--b", required=True, help="folder with the B (target) images")
    p.add_argument("--split", default="train", help="output sub-folder, e.g. train/val/test (default: train)")
    p.add_argument("--resize-to", default="keep", help="'keep' (default), N or HxW: size of each half")
    p.add_argument("--skip-unmatched", action="store_true", help="skip names found in only one folder")
    _add_output_args(p)

    p = sub.add_parser(
        "edges",
        help="edges -> photo pairs from a folder of photos (Canny)",
        description="A = Canny edges (scikit-image, on the grayscale image) drawn black on white, B = the photo.",
    )
    _add_photo_args(p)
    p.add_argument(
        "--sigma", type=float, default=2.0, help="Gaussian sigma of the Canny detector (default: 2.0)"
    )
    p.add_argument(
        "--low-threshold", type=float, default=None, help="Canny low threshold (intensity in [0,1])"
    )
    p.add_argument(
        "--high-threshold", type=float, default=None, help="Canny high threshold (intensity in [0,1])"
    )
    p.add_argument("--thickness", type=int, default=1, help="edge thickness in pixels (default: 1)")

    p = sub.add_parser(
        "colorization",
        help="grayscale -> colour pairs from a folder of photos",
        description="A = grayscale photo stored as 3-channel RGB (R=G=B, so the standard loader works; "
        "input_nc=1 models can use any single channel), B = the colour photo.",
    )
    _add_photo_args(p)

    p = sub.add_parser(
        "download",
        help="download a standard pix2pix / CycleGAN dataset (or extract a given archive)",
        description="Download NAME into ROOT/NAME (skipped if present), verify SHA256 when known, extract safely.",
    )
    p.add_argument("name", nargs="?", help="dataset name, e.g. facades or horse2zebra")
    p.add_argument("--root", default="datasets", help="parent folder (default: ./datasets)")
    p.add_argument("--kind", choices=["pix2pix", "cyclegan"], help="needed for maps, cityscapes, facades")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--url", help="download from this URL instead (file:// works)")
    src.add_argument("--archive", help="extract this local .tar.gz/.zip instead of downloading")
    p.add_argument("--sha256", help="expected SHA256 of the archive")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    p.add_argument("--list", action="store_true", help="list the known datasets and exit")
    return parser


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "combine":
        tools.combine_folders(
            args.a, args.b, args.out, split=args.split, size=tools.parse_size(args.resize_to), fmt=args.format,
            quality=args.quality, skip_unmatched=args.skip_unmatched, overwrite=args.overwrite,
        )  # fmt: skip
    elif args.command == "edges":
        tools.make_edges_dataset(
            args.src, args.out, size=args.size, sigma=args.sigma, low_threshold=args.low_threshold,
            high_threshold=args.high_threshold, thickness=args.thickness, center_crop=args.center_crop,
            val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed, fmt=args.format,
            quality=args.quality, overwrite=args.overwrite,
        )  # fmt: skip
    elif args.command == "colorization":
        tools.make_colorization_dataset(
            args.src, args.out, size=args.size, center_crop=args.center_crop, val_fraction=args.val_fraction,
            test_fraction=args.test_fraction, seed=args.seed, fmt=args.format, quality=args.quality,
            overwrite=args.overwrite,
        )  # fmt: skip
    elif args.command == "download":
        if args.list:
            for kind, names in available_datasets().items():
                print(f"{kind}: {' '.join(names)}")
            return 0
        if not args.name:
            parser.error("download: NAME is required (or --list)")
        download_dataset(
            args.name, args.root, kind=args.kind, url=args.url, archive=args.archive, sha256=args.sha256,
            timeout=args.timeout,
        )  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args, parser)
    except (DataError, DownloadError) as exc:  # DatasetToolError is a DataError
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
