"""Tiny real training runs shared by the API, export, logger and notebook tests (32 px, 8 images, 1 epoch)."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY_BASE
from hydra import compose, initialize_config_dir

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# The shared tiny settings on the CPU trainer config (with the sanity validation and the default loggers).
TINY = ["trainer=cpu", *TINY_BASE]


def compose_train(output_dir: Path, overrides: list[str] = ()):
    """conf/train.yaml with the tiny settings; ``paths.output_dir`` replaces Hydra's run folder."""
    # pix2pix: a U-Net with 5 halvings takes 32 px; CycleGAN: a ResNet generator with one block.
    generator = ["generator.n_blocks=1"] if "experiment=shapes_cyclegan" in overrides else ["generator.num_downs=5"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            config_name="train", overrides=[*TINY, *generator, f"paths.output_dir={output_dir}", *overrides]
        )


def tiny_run(output_dir: Path, overrides: list[str] = ()) -> float | None:
    from gan_translate.train import train

    return train(compose_train(output_dir, overrides))
