"""Translate images with a trained model: needs nothing but the checkpoint.

    python -m gan_translate.predict ckpt_path=X input=FILE_OR_DIR output_dir=DIR [direction=AtoB|BtoA]

Writes one PNG per input image, with the input's stem. A|B pair images (pix2pix layout) are split and
their source half translated: ``pairs=auto`` does so when the model was trained on A|B data and the
image is twice as wide as high. See ``gan_translate.translator`` for dropout/batch_stats/size_policy.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import hydra
import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from PIL import Image

from gan_translate.config import CONF_DIR
from gan_translate.data.datasets import IMAGE_EXTENSIONS, list_images, read_image
from gan_translate.data.labels import files_by_stem, read_instance_map, read_map
from gan_translate.errors import usage_errors_as_messages
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
        if pairs == "auto" and trained_on_pairs and data.get("square_halves") is False and image.width % 2 == 0:
            # Trained on A|B pairs of any aspect: a pair of non-square halves cannot be told from a single image.
            warnings.warn("this model was trained on A|B pairs with non-square halves (data.square_halves=false); "
                          "pairs=auto splits only 2:1 images and translates the others whole: pass pairs=true to "
                          "split every input (or pairs=false to silence this)", stacklevel=2)
        return image
    half = image.width // 2
    left, right = image.crop((0, 0, half, image.height)), image.crop((half, 0, image.width, image.height))
    return right if data.get("direction") == "BtoA" else left


def matching_instance_maps(cfg: DictConfig, files: list[Path], translator: Translator) -> dict[Path, Path] | None:
    """pix2pixHD with ``instances=DIR``: each input's instance map, matched by name after dropping
    ``label_suffix`` / ``instance_suffix`` (as ``data=label_folders`` matches them); every one must exist."""
    if not cfg.get("instances"):
        return None
    if not translator.instance_channels:
        raise ValueError(f"instances={cfg.instances}: this model was trained without instance maps "
                         "(data.instance=false); leave instances out")
    maps = files_by_stem(Path(cfg.instances), cfg.instance_suffix, "predict instance maps")
    suffix = cfg.label_suffix

    def key(path: Path) -> str:
        return path.stem[: -len(suffix)] if suffix and path.stem.endswith(suffix) else path.stem

    missing = [path.name for path in files if key(path) not in maps]
    if missing:
        raise ValueError(f"instances={cfg.instances} has no instance map for {', '.join(missing[:5])}"
                         f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''} (matched by name after "
                         f"label_suffix={suffix!r}, instance_suffix={cfg.instance_suffix!r})")
    return {path: maps[key(path)] for path in files}


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
    names_of: dict[str, list[str]] = {}
    for path in files:
        names_of.setdefault(path.stem, []).append(path.name)
    clashes = [names for names in names_of.values() if len(names) > 1]
    if clashes:  # each output is STEM.png: one would overwrite the other
        raise ValueError(f"predict input {cfg.input}: files share a name and would write the same output PNG: "
                         + "; ".join(" and ".join(names) for names in clashes[:5]) + "; rename or move them")
    instance_maps = matching_instance_maps(cfg, files, translator)
    output_dir = Path(cfg.output_dir)
    if output_dir.is_dir() and any(output_dir.samefile(folder) for folder in {path.parent for path in files}):
        raise ValueError(f"output_dir={cfg.output_dir} is the folder of the inputs: the outputs (STEM.png) would "
                         "replace the PNG inputs and mix with the others; choose another output_dir")
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
            if instance_maps is None:
                output = translator(image)
            else:
                source = translator.to_tensor(image)
                instances = read_instance_map(instance_maps[path]).float()
                if instances.shape[-2:] != source.shape[-2:]:
                    raise ValueError(f"its instance map {instance_maps[path].name} is "
                                     f"{instances.shape[-1]}x{instances.shape[-2]}, the image "
                                     f"{source.shape[-1]}x{source.shape[-2]}")
                output = translator.to_pil(translator.translate(torch.cat([source, instances])))
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
    with usage_errors_as_messages():
        predict(cfg)


if __name__ == "__main__":
    main()
