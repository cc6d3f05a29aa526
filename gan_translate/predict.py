"""Translate images with a trained model: needs nothing but the checkpoint.

    python -m gan_translate.predict ckpt_path=X input=FILE_OR_DIR output_dir=DIR [direction=AtoB|BtoA]

Writes one PNG per input image, with the input's stem. A|B pair images (pix2pix layout) are split and
their source half translated: ``pairs=auto`` does so when the model was trained on A|B data and the
image is twice as wide as high. See ``gan_translate.translator`` for dropout/batch_stats/size_policy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from PIL import Image

from gan_translate.config import CONF_DIR
from gan_translate.data.datasets import IMAGE_EXTENSIONS, list_images, read_image
from gan_translate.data.labels import read_map
from gan_translate.known_warnings import silence_known_warnings
from gan_translate.translator import Translator

log = logging.getLogger(__name__)


def input_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"input {path} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
        return [path]
    return list_images(path, what="predict input")


def source_half(image: Image.Image, translator: Translator, pairs: str | bool) -> Image.Image:
    """The half of an A|B image that the model translates, or the image itself if it is not a pair."""
    data = translator.config.get("data", {})
    # The training datamodule says whether its images hold A and B side by side (``pairs_side_by_side``).
    trained_on_pairs = bool(getattr(get_class(data["_target_"]), "pairs_side_by_side", False)) if data else False
    is_pair = pairs is True or (pairs == "auto" and trained_on_pairs and image.width == 2 * image.height)
    if not is_pair:
        return image
    half = image.width // 2
    left, right = image.crop((0, 0, half, image.height)), image.crop((half, 0, image.width, image.height))
    return right if data.get("direction") == "BtoA" else left


def predict(cfg: DictConfig) -> list[Path]:
    translator = Translator.from_checkpoint(
        cfg.ckpt_path,
        direction=cfg.direction,
        device=cfg.device,
        precision=str(cfg.precision),
        dropout=cfg.dropout,
        batch_stats=cfg.batch_stats,
        size_policy=cfg.size_policy,
        compile=cfg.compile,
    )
    files = input_files(cfg.input)
    by_stem: dict[str, list[str]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path.name)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:  # each output is STEM.png: one would overwrite the other
        raise ValueError(f"predict input {cfg.input}: files share a name and would write the same output PNG: "
                         + "; ".join(" and ".join(names) for names in clashes[:5]) + "; rename or move them")
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)  # test-time dropout and pix2pixHD's cluster draws repeat
    written = []
    for path in files:
        if translator.label_nc:  # class ids as stored: the image reader would turn palette indices into colours
            image = read_map(path)
        else:
            image = source_half(read_image(path), translator, cfg.pairs)
        try:
            output = translator(image)
        except ValueError as error:  # name the file; the outputs written so far stay
            raise ValueError(f"predict input {path}: {error}") from error
        target = output_dir / f"{path.stem}.png"
        output.save(target)
        written.append(target)
    log.info("translated %d image(s) into %s", len(written), output_dir)
    return written


@hydra.main(config_path=CONF_DIR, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    predict(cfg)


if __name__ == "__main__":
    main()
