"""Sample a trained noise-to-image model (DCGAN, cGAN, InfoGAN, AAE): needs nothing but the checkpoint.

    python -m gan_translate.sample ckpt_path=X [n=64] [label=3] [seed=0] [output=grid.png] [per_file=true]

Writes one grid PNG, or with ``per_file=true`` one PNG per sample into the folder ``output``. ``label`` is a class
(cGAN, supervised AAE) or a value of InfoGAN's categorical code; unset, conditional models cycle through all of
them (one per grid column).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from gan_translate.config import CONF_DIR
from gan_translate.errors import usage_errors_as_messages
from gan_translate.sampler import Sampler

log = logging.getLogger(__name__)


def default_output(ckpt_path: str | Path, per_file: bool) -> Path:
    ckpt_path = Path(ckpt_path)
    return ckpt_path.with_name(f"{ckpt_path.stem}_samples" + ("" if per_file else ".png"))


def sample(cfg: DictConfig) -> Path:
    if cfg.n < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    sampler = Sampler.from_checkpoint(cfg.ckpt_path, device=cfg.device)
    output = Path(cfg.output) if cfg.output else default_output(cfg.ckpt_path, cfg.per_file)
    # Sample first: a bad label is refused before any folder is made.
    if cfg.per_file:
        images = Sampler.to_pil(sampler(cfg.n, cfg.label, cfg.seed))
        output.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            image.save(output / f"{index:05d}.png")
        log.info("wrote %d samples into %s", cfg.n, output)
    else:
        grid = sampler.grid(cfg.n, cfg.label, cfg.seed, cfg.nrow)
        output.parent.mkdir(parents=True, exist_ok=True)
        grid.save(output)
        log.info("wrote a grid of %d samples: %s", cfg.n, output)
    return output


@hydra.main(config_path=CONF_DIR, config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with usage_errors_as_messages():
        sample(cfg)


if __name__ == "__main__":
    main()
